//! The tokio driver: one task per client that owns the link and the [`Core`], and does the
//! I/O the core asks for.
//!
//! It waits for a request from a handle, replies on the link, the link being opened, a token
//! callback finishing, or the core's next deadline; feeds what happened to the core with
//! `now`; then carries out the core's actions (open, close, send in batches, run a token
//! callback). Every future in its `select!` is cancel-safe: link state lives in the link and
//! the link being opened is a stored future. The task ends when every handle is dropped.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tether_proto::{Command, Reply};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use crate::Error;
use crate::core::{Action, Core, Request, TokenTarget};
use crate::link::{Closed, Endpoint, Link};

type Opening = Pin<Box<dyn Future<Output = Result<Link, Error>> + Send>>;

/// Runs a client until all its handles are dropped.
pub(crate) async fn run(
    core: Core,
    endpoint: Endpoint,
    requests: mpsc::UnboundedReceiver<Request>,
    connect_timeout: Duration,
) {
    let (token_tx, token_rx) = mpsc::unbounded_channel();
    let mut driver = Driver {
        core,
        endpoint,
        link: None,
        opening: None,
        token_tx,
        connect_timeout,
    };
    driver.serve(requests, token_rx).await;
}

struct Driver {
    core: Core,
    endpoint: Endpoint,
    link: Option<Link>,
    /// The link being opened, polled by the main loop so opening never blocks requests.
    opening: Option<Opening>,
    token_tx: mpsc::UnboundedSender<(TokenTarget, Result<String, Error>)>,
    connect_timeout: Duration,
}

enum Wake {
    Request(Option<Request>),
    Replies(Result<Vec<Reply>, Closed>),
    Opened(Result<Link, Error>),
    Token(TokenTarget, Result<String, Error>),
    Timeout,
}

impl Driver {
    async fn serve(
        &mut self,
        mut requests: mpsc::UnboundedReceiver<Request>,
        mut tokens: mpsc::UnboundedReceiver<(TokenTarget, Result<String, Error>)>,
    ) {
        loop {
            self.act().await;
            let deadline = self.core.poll_timeout();
            let wake = tokio::select! {
                request = requests.recv() => Wake::Request(request),
                replies = recv(&mut self.link) => Wake::Replies(replies),
                opened = open(&mut self.opening) => Wake::Opened(opened),
                Some((target, result)) = tokens.recv() => Wake::Token(target, result),
                () = sleep_until(deadline) => Wake::Timeout,
            };
            let now = Instant::now();
            match wake {
                Wake::Request(Some(request)) => self.core.handle_request(request, now),
                Wake::Request(None) => {
                    debug!("every client handle was dropped; the driver stops");
                    return;
                }
                Wake::Replies(Ok(replies)) => {
                    for reply in replies {
                        self.core.handle_reply(reply, now);
                    }
                }
                Wake::Replies(Err(closed)) => {
                    debug!(code = ?closed.code, reason = %closed.reason, "link closed");
                    self.link = None;
                    self.core
                        .handle_link_closed(closed.code, &closed.reason, now);
                }
                Wake::Opened(result) => {
                    self.opening = None;
                    match result {
                        Ok(link) => {
                            self.link = Some(link);
                            self.core.handle_link_open(now);
                        }
                        Err(error) => {
                            debug!(%error, "cannot open a link");
                            self.core.handle_link_closed(None, &error.to_string(), now);
                        }
                    }
                }
                Wake::Token(target, result) => self.core.handle_token(target, result, now),
                Wake::Timeout => self.core.handle_timeout(now),
            }
        }
    }

    /// Carries out the core's actions until it has none; consecutive sends go out as one
    /// batch.
    async fn act(&mut self) {
        loop {
            let mut batch = Vec::new();
            let mut acted = false;
            while let Some(action) = self.core.poll_action() {
                acted = true;
                match action {
                    Action::Send(command) => batch.push(*command),
                    Action::Open => {
                        self.flush(&mut batch).await;
                        self.link = None;
                        let endpoint = self.endpoint.clone();
                        let limit = self.connect_timeout;
                        self.opening = Some(Box::pin(async move {
                            tokio::time::timeout(limit, Link::open(&endpoint))
                                .await
                                .unwrap_or_else(|_| Err(Error::transport("connect timed out")))
                        }));
                    }
                    Action::Close => {
                        self.flush(&mut batch).await;
                        self.link = None;
                        self.opening = None;
                    }
                    Action::FetchToken(target, source) => {
                        let tx = self.token_tx.clone();
                        tokio::spawn(async move {
                            let result = source.fetch().await;
                            let _ = tx.send((target, result));
                        });
                    }
                }
            }
            self.flush(&mut batch).await;
            if !acted {
                return;
            }
        }
    }

    async fn flush(&mut self, batch: &mut Vec<Command>) {
        if batch.is_empty() {
            return;
        }
        let commands = std::mem::take(batch);
        let Some(link) = self.link.as_mut() else {
            return;
        };
        // A write that cannot finish in time means the link is as good as dead.
        let failed = match tokio::time::timeout(self.connect_timeout, link.send(&commands)).await {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(_) => "write timed out".to_owned(),
        };
        debug!(reason = %failed, "link write failed");
        self.link = None;
        self.core.handle_link_closed(None, &failed, Instant::now());
    }
}

async fn recv(link: &mut Option<Link>) -> Result<Vec<Reply>, Closed> {
    match link {
        Some(link) => link.recv().await,
        None => std::future::pending().await,
    }
}

async fn open(opening: &mut Option<Opening>) -> Result<Link, Error> {
    match opening {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
