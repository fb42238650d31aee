//! One error type for the crate: every failure names what was wrong, on one line.

use std::fmt;

/// Shapes print as `[256, 64, 2, 2]`.
fn shape_str(shape: &[usize]) -> String {
    format!("{shape:?}")
}

#[derive(Debug)]
pub enum Error {
    /// A tensor the model needs is absent from the weight file.
    MissingWeight { key: String, expected: Vec<usize> },
    /// A tensor is present with the wrong shape.
    WeightShape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// The bytes are not a readable checkpoint (truncated, wrong format, bad dtype).
    WeightFormat(String),
    /// The checkpoint is a model this crate does not run (e.g. an encoder not yet ported).
    UnsupportedModel(String),
    /// A caller's argument is invalid: a point outside the image, an empty box, a wrong shape.
    InvalidInput(String),
    /// An image could not be read or decoded.
    Image(String),
    /// A file could not be read or written.
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The GPU engine failed: no adapter, a lost device, a shader or validation error.
    Gpu(String),
    /// An error from the tensor library, with what we were doing.
    Tensor(candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::MissingWeight { key, expected } => write!(
                f,
                "weight `{key}` is missing from the checkpoint (expected shape {})",
                shape_str(expected)
            ),
            Error::WeightShape {
                key,
                expected,
                found,
            } => write!(
                f,
                "weight `{key}` has shape {} but the model expects {}",
                shape_str(found),
                shape_str(expected)
            ),
            Error::WeightFormat(msg) => write!(f, "unreadable weights: {msg}"),
            Error::UnsupportedModel(msg) => write!(f, "unsupported model: {msg}"),
            Error::InvalidInput(msg) => write!(f, "invalid input: {msg}"),
            Error::Image(msg) => write!(f, "image error: {msg}"),
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::Gpu(msg) => write!(f, "GPU: {msg}"),
            // candle's messages can span lines (backtraces); keep the first.
            Error::Tensor(e) => {
                let msg = e.to_string();
                write!(f, "tensor error: {}", msg.lines().next().unwrap_or(""))
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Tensor(e)
    }
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    /// The same error with `context` (a file name, an argument) in front of its message.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        match self {
            Error::WeightFormat(m) => Error::WeightFormat(format!("{context}: {m}")),
            Error::UnsupportedModel(m) => Error::UnsupportedModel(format!("{context}: {m}")),
            Error::InvalidInput(m) => Error::InvalidInput(format!("{context}: {m}")),
            Error::Image(m) => Error::Image(format!("{context}: {m}")),
            Error::Gpu(m) => Error::Gpu(format!("{context}: {m}")),
            other => other,
        }
    }

    /// Shorthand for [`Error::Gpu`].
    pub fn gpu(msg: impl Into<String>) -> Self {
        Error::Gpu(msg.into())
    }

    /// Shorthand for [`Error::WeightFormat`].
    pub fn format(msg: impl Into<String>) -> Self {
        Error::WeightFormat(msg.into())
    }
}
