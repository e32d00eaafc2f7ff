use std::io;

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket itself failed (open, send, receive, setns).
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request.
    #[error("{op}: {msg}")]
    Kernel {
        op: String,
        errno: i32,
        /// strerror, plus the kernel's extended-ack text when it gave one.
        msg: String,
    },
    /// A reply could not be parsed.
    #[error("{op}: cannot decode netlink reply: {msg}")]
    Decode { op: &'static str, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { op, source }
    }

    pub(crate) fn kernel(errno: i32, ext_msg: Option<String>) -> Error {
        let mut msg = io::Error::from_raw_os_error(errno).to_string();
        if let Some(ext) = ext_msg {
            msg = format!("{msg}: {ext}");
        }
        Error::Kernel {
            op: String::new(),
            errno,
            msg,
        }
    }

    /// Names the operation that failed, e.g. "add route 10.0.0.0/8".
    pub fn context(self, what: impl Into<String>) -> Error {
        match self {
            Error::Kernel { errno, msg, .. } => Error::Kernel {
                op: what.into(),
                errno,
                msg,
            },
            other => other,
        }
    }

    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Decode { .. } => None,
        }
    }

    /// The object to delete or change was not there: for a delete, success.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT | libc::ENODEV | libc::ESRCH | libc::EADDRNOTAVAIL)
        )
    }

    /// The object to create exists already.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}
