"""The U-Net (the paper's architecture at any width), checkpoint loading for our own and foreign weight layouts,
and training. Nothing here knows about coding."""
