"""What the reference tells: the guided transfer, the change estimate and the trust layers.

Pure torch; used by upscale, evaluate and train alike.
"""
