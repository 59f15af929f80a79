//! Subscription streams from the backend (compat-proxy §6.6): a subscribe in a namespace with
//! `subscribe_stream_proxy_enabled` opens a gRPC stream whose first message decides the
//! subscription, as the subscribe proxy's answer would; every later publication on it goes
//! to this one subscriber, with no offset (no history, no recovery). With
//! `subscribe_stream_proxy_bidirectional` the stream also carries the subscriber's own
//! publications in the channel to the backend ([`Session::publish_into_stream`]), and the
//! client gets an empty publish result; nothing is broadcast.
//!
//! A task per subscription reads the stream and queues the publications on the connection.
//! When the stream ends it tells the session through the connection's control messages
//! ([`Control::StreamEnded`]), which removes the subscription and pushes the unsubscribe:
//! 2000 when the backend closed the stream, 2500 when it failed. Removing the subscription
//! (client unsubscribe, server unsubscribe, disconnect) aborts the task, which drops the
//! stream and so cancels the call.

use std::sync::Arc;

use bytes::Bytes;
use tether_proto::codes::ClientError;
use tether_proto::{Reply, SubscribeRequest};
use tokio::task::AbortHandle;
use tracing::debug;

use super::proxy::{proxy_disconnect, proxy_error_reply};
use super::{Now, Session, error_reply};
use crate::config::ProxyEvent;
use crate::hub::{Control, Subscriber};
use crate::node::Node;
use crate::proxy::{
    Answer, StreamItem, StreamPublisher, SubscribeRequest as ProxySubscribeRequest,
    SubscribeResult, SubscribeStream,
};
use crate::wire::{Disconnect, encode_frame};

/// The task reading one subscription's stream; aborted (and the stream so cancelled) when
/// the subscription's state is dropped. A bidirectional stream's sending half is kept
/// beside it.
#[derive(Debug)]
pub(super) struct StreamTask {
    task: AbortHandle,
    publisher: Option<StreamPublisher>,
}

impl Drop for StreamTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session {
    /// Opens the subscription stream of a subscribe in a stream namespace: the backend's
    /// result and the stream, or the command's error reply (`Verdict::Reply`); `Err` closes
    /// the connection (the backend's `disconnect`).
    pub(super) async fn open_subscribe_stream(
        &self,
        node: &Node,
        req: &SubscribeRequest,
    ) -> Result<Result<(SubscribeResult, SubscribeStream), Reply>, Disconnect> {
        let Ok(ns) = node.config.namespace_for(&req.channel) else {
            return Ok(Err(error_reply(ClientError::UNKNOWN_CHANNEL)));
        };
        let Some(proxy) = node
            .proxies
            .get(ProxyEvent::SubscribeStream, &ns.subscribe_stream_proxy_name)
        else {
            return Ok(Err(error_reply(ClientError::NOT_AVAILABLE)));
        };
        let request = ProxySubscribeRequest {
            common: self.common(),
            user: self.user.to_string(),
            channel: req.channel.clone(),
            meta: self.meta_for(proxy),
            data: req.data.clone(),
        };
        let bidirectional = ns.subscribe_stream_proxy_bidirectional;
        let reply = match proxy
            .subscribe_stream(&request, self.forward(), bidirectional)
            .await
        {
            Ok((Answer::Result(result), stream)) => {
                return Ok(Ok((result.unwrap_or_default(), stream)));
            }
            Ok((Answer::Error(error), _)) => proxy_error_reply(error),
            Ok((Answer::Disconnect(disconnect), _)) => return Err(proxy_disconnect(disconnect)),
            Err(_) => error_reply(ClientError::INTERNAL),
        };
        Ok(Err(reply))
    }

    /// Starts the task that feeds `sub` (live, its subscribe reply queued) from `stream`.
    pub(super) fn feed_from_stream(&mut self, sub: &Arc<Subscriber>, mut stream: SubscribeStream) {
        let publisher = stream.take_publisher();
        let conn = self.conn.clone();
        let channel = sub.channel().clone();
        let weak = Arc::downgrade(sub);
        let task = tokio::spawn(async move {
            let name = channel.to_string();
            loop {
                let failed = match stream.next().await {
                    StreamItem::Publication { data, tags } => {
                        let reply = Reply {
                            push: Some(tether_proto::Push {
                                channel: name.clone(),
                                r#pub: Some(tether_proto::Publication {
                                    data,
                                    tags,
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        };
                        match encode_frame(conn.encoding, conn.framing, &reply) {
                            Ok(frame) => {
                                // False: the connection is closing, or its queue is full
                                // (it is then closed with 3008).
                                if !conn.enqueue(frame) {
                                    return;
                                }
                            }
                            // Data a JSON client cannot be sent (not JSON): skipped.
                            Err(error) => {
                                debug!(channel = %name, %error, "stream publication skipped");
                            }
                        }
                        continue;
                    }
                    StreamItem::End => false,
                    StreamItem::Failed => true,
                };
                conn.post(Control::StreamEnded {
                    channel,
                    sub: weak,
                    failed,
                });
                return;
            }
        });
        if let Some(state) = self.subs.get_mut(sub.channel()) {
            state.stream = Some(StreamTask {
                task: task.abort_handle(),
                publisher,
            });
        } else {
            task.abort();
        }
    }

    /// A client publication in a stream namespace: into this client's bidirectional stream
    /// of `channel`, if it has one (`None` otherwise). The backend gets it on the stream and
    /// the client an empty result; a stream that is gone or takes nothing for the proxy's
    /// timeout answers the protocol's internal error.
    pub(super) async fn publish_into_stream(&self, channel: &str, data: &Bytes) -> Option<Reply> {
        let publisher = self.subs.get(channel)?.stream.as_ref()?.publisher.clone()?;
        Some(match publisher.publish(data.clone()).await {
            Ok(()) => Reply {
                publish: Some(tether_proto::PublishResult::default()),
                ..Default::default()
            },
            Err(error) => {
                debug!(channel, %error, "publication into a subscription stream failed");
                error_reply(ClientError::INTERNAL)
            }
        })
    }

    /// The stream feeding a subscription ended: the subscription ends with it, unless it
    /// was replaced since.
    pub(super) async fn stream_ended(
        &mut self,
        node: &Node,
        channel: &str,
        sub: &std::sync::Weak<Subscriber>,
        failed: bool,
        now: Now,
    ) -> Result<(), Disconnect> {
        let current = self
            .subs
            .get(channel)
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(&s.hub), sub.as_ptr()));
        if !current {
            return Ok(());
        }
        self.unsubscribe(node, channel, now).await?;
        let unsubscribe = if failed {
            tether_proto::codes::UnsubscribeCode::INSUFFICIENT_STATE.into()
        } else {
            tether_proto::Unsubscribe {
                code: u32::from(super::UNSUBSCRIBE_SERVER.0),
                reason: super::UNSUBSCRIBE_SERVER.1.to_owned(),
            }
        };
        self.send_push(tether_proto::Push {
            channel: channel.to_owned(),
            unsubscribe: Some(unsubscribe),
            ..Default::default()
        })
    }
}
