"""The networks as plain ``torch.nn`` modules with upstream parameter names: RRDBNet (Real-ESRGAN's
generator), the U-Net discriminator, VGG19 features, and the compact network with its data-consistency
layer. Nothing here imports the rest of medsr.
"""
