"""Backends: the wire mapping for each way a model is served.

Each backend turns the neutral conversation (``nemovlm.messages``) into its wire
request and its wire reply into raw ``Delta``s; everything model-specific that is not
wire shape (reasoning, prompt tools, media rules) lives in the core modules.
"""
