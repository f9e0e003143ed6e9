"""The one error type checkpoint readers and writers raise."""
from sbs_jax.errors import InputError


class CheckpointError(InputError):
    """A checkpoint cannot be read or written as asked.

    The message names the file and, where one is involved, the tensor with its expected and found shape.
    Nothing is ever loaded partially: any problem with any tensor fails the whole load.
    """
