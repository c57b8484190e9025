//! What a failure means for the message being handled, for every worker: the one mapping from
//! the database's, Redis's and the channel's errors to the consumer framework's verdict
//! (`HandleError`: wait for the dependency, retry later, or dead-letter now).

use crate::cache::CacheError;
use crate::channel::ChannelError;
use crate::channel_sync::SyncError;
use crate::mq::consumer::HandleError;
use crate::store;

impl From<store::Error> for HandleError {
    fn from(e: store::Error) -> HandleError {
        match e {
            // Nothing was changed: hold the message until the database is back.
            store::Error::Unavailable(_) => HandleError::Unavailable(e.to_string()),
            // A deadlock or a failed statement rolled back: worth another try after a delay,
            // and dead-lettered with the reason once the tiers are used up.
            _ => HandleError::Retryable(e.to_string()),
        }
    }
}

impl From<CacheError> for HandleError {
    fn from(e: CacheError) -> HandleError {
        match e {
            CacheError::Unavailable(_) => HandleError::Unavailable(e.to_string()),
            CacheError::Command(_) => HandleError::Retryable(e.to_string()),
        }
    }
}

impl From<ChannelError> for HandleError {
    fn from(e: ChannelError) -> HandleError {
        match e {
            ChannelError::Transient(_) | ChannelError::NotFound => HandleError::Retryable(format!("WeChat: {e}")),
            ChannelError::Refused { .. }
            | ChannelError::Forged(_)
            | ChannelError::AlreadyPaid
            | ChannelError::Closed => {
                tracing::error!(error = %e, "WeChat refused a request; check the merchant settings");
                HandleError::Permanent(format!("WeChat: {e}"))
            }
        }
    }
}

impl From<SyncError> for HandleError {
    fn from(e: SyncError) -> HandleError {
        match e {
            SyncError::Channel(e) => e.into(),
            SyncError::Store(e) => e.into(),
        }
    }
}
