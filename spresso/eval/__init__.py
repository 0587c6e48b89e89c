"""spresso.eval"""
