"""Microcontrollers join the federation through a Linux gateway device (not built yet)."""
