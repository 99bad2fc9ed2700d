"""Image-quality scores: PSNR/SSIM/SAM/ERGAS and the optional LPIPS (pure numpy/torch)."""
