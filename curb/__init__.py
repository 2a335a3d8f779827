"""curb: the open benchmark suite for continual user-representation learning."""

__version__ = "0.1.0"
