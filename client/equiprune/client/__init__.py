"""The equiprune client: SDK and CLI. Imports neither torch nor ray."""
