"""The one error type checkpoint readers and writers raise."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read or written as asked.

    The message names the file and, where one is involved, the tensor with its expected and found shape.
    Nothing is ever loaded partially: any problem with any tensor fails the whole load.
    """
