"""spresso.diffusion"""
