"""panther: faster, smaller PyTorch models with randomized numerical linear algebra."""

__version__ = "0.1.0"
