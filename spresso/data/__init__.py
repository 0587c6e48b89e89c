"""spresso.data"""
