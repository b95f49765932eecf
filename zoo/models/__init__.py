"""One module per generative family; each registers its families with ``zoo.registry.register``.

Modules whose names start with an underscore hold pieces that several families share.
"""
