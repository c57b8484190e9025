//! Publishing with publisher confirms: a message counts as sent only once the broker has
//! confirmed it stored it in a queue. Every publish is `mandatory`, so a message with no queue
//! to go to comes back as an error instead of vanishing.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};

use super::MqError;

/// A channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    /// How long a confirm may take before the publish counts as failed.
    confirm_timeout: Duration,
}

/// A published message whose confirm has not been awaited yet (to pipeline several).
pub struct PendingConfirm {
    confirm: PublisherConfirm,
    queue: String,
    timeout: Duration,
}

impl Publisher {
    /// Opens a new channel on `conn` and puts it in confirm mode.
    pub async fn open(conn: &Connection, confirm_timeout: Duration) -> Result<Publisher, MqError> {
        let channel = conn.create_channel().await?;
        Publisher::on(channel, confirm_timeout).await
    }

    /// Puts an existing channel in confirm mode (a consumer's channel publishes its retries).
    pub async fn on(channel: Channel, confirm_timeout: Duration) -> Result<Publisher, MqError> {
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher { channel, confirm_timeout })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes to `queue` through the default exchange and waits for the confirm.
    pub async fn publish(&self, queue: &str, body: &[u8], properties: BasicProperties) -> Result<(), MqError> {
        self.send(queue, body, properties).await?.confirmed().await
    }

    /// Publishes without waiting for the confirm.
    pub async fn send(&self, queue: &str, body: &[u8], properties: BasicProperties) -> Result<PendingConfirm, MqError> {
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let confirm = self.channel.basic_publish("".into(), queue.into(), options, body, properties).await?;
        Ok(PendingConfirm { confirm, queue: queue.to_owned(), timeout: self.confirm_timeout })
    }
}

/// Sends replies to direct reply-to addresses, on a channel of its own *without* confirms:
/// nothing depends on a reply being stored (if the requester is gone, having answered 202, the
/// reply is dropped by design; the result is in the database either way), and a confirm
/// channel keeps every confirm nobody awaits until the channel closes.
#[derive(Clone)]
pub struct Replier {
    channel: Channel,
}

impl Replier {
    pub async fn open(conn: &Connection) -> Result<Replier, MqError> {
        Ok(Replier { channel: conn.create_channel().await? })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub async fn reply(&self, reply_to: &str, correlation_id: &str, body: &[u8]) -> Result<(), MqError> {
        let properties = BasicProperties::default()
            .with_correlation_id(correlation_id.into())
            .with_content_type("application/json".into());
        let options = BasicPublishOptions::default();
        let confirm = self.channel.basic_publish("".into(), reply_to.into(), options, body, properties).await?;
        // Not in confirm mode: this resolves at once (NotRequested) and leaves nothing behind.
        let _ = confirm.await;
        Ok(())
    }
}

impl PendingConfirm {
    /// Waits for the broker's confirm; errors unless the message is stored in a queue.
    pub async fn confirmed(self) -> Result<(), MqError> {
        let confirmation = tokio::time::timeout(self.timeout, self.confirm)
            .await
            .map_err(|_| MqError::Unconfirmed(format!("no confirm within {:?}", self.timeout)))?
            .map_err(|e| MqError::Unconfirmed(e.to_string()))?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(MqError::Refused(format!(
                "no queue {:?} to route to ({}); declare the topology with `payctl topology`",
                self.queue, returned.reply_text
            ))),
            Confirmation::Nack(_) => Err(MqError::Refused(format!("queue {:?} nacked the message", self.queue))),
            Confirmation::NotRequested => Err(MqError::Refused("channel is not in confirm mode".into())),
        }
    }
}
