"""spresso.models"""
