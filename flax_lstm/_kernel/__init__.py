"""The compiled CPU kernel's source, its build and the partitioning of its calls (private;
the public face is `flax_lstm.kernel`)."""
