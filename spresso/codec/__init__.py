"""spresso.codec"""
