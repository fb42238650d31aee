//! Pre- and post-processing.
