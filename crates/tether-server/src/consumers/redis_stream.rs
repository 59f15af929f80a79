//! The Redis Streams consumer (being written: it refuses to start until it lands).

use std::future::Future;

use super::{ConsumerError, Dispatcher};
use crate::config::RedisStreamConsumerConfig;

/// Connects; the returned future consumes until the node shuts down.
pub(super) async fn start(
    dispatcher: Dispatcher,
    _config: &RedisStreamConsumerConfig,
) -> Result<impl Future<Output = ()> + Send + 'static, ConsumerError> {
    Err::<std::future::Ready<()>, _>(ConsumerError {
        kind: "redis_stream",
        name: dispatcher.name().to_owned(),
        message: "not available in this build".to_owned(),
    })
}
