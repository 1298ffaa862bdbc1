"""LoRA modifiers hot-swapped on the loaded base (the modifiers issue builds them)."""
