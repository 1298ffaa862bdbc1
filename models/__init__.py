"""Model files (manifest, store, demo builder) and the llama.cpp engine."""
