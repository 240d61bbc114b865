"""Exceptions normrt raises beyond the built-in ones."""


class ModelError(ValueError):
    """A model normrt cannot load: unreadable, malformed, or failing onnx.checker.

    The message names what is wrong and, where there is one, the node.
    """
