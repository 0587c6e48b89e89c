"""spresso.quant"""
