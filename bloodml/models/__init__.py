"""Models: a registry of backbones (name -> builder, preprocessing defaults, Grad-CAM layer), heads, export."""
