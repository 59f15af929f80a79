//! The Redis side of [`crate::broker::lifecycle`]: cluster-wide occupancy and user status.
//!
//! TO BE WRITTEN (see the brief): Lua scripts over keys under one hash tag.

use super::RedisEngine;
use crate::broker::BrokerError;
use crate::broker::lifecycle::{Change, Decisions, StatusField, UserStatus};

impl RedisEngine {
    /// See [`crate::broker::lifecycle::Lifecycle::apply`].
    pub(crate) async fn lifecycle_apply(
        &self,
        node: &str,
        changes: &[Change],
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Decisions, BrokerError> {
        let _ = (node, changes, now_ms, grace_ms);
        Err(BrokerError::NotAvailable)
    }

    /// See [`crate::broker::lifecycle::Lifecycle::tick`].
    pub(crate) async fn lifecycle_tick(
        &self,
        node: &str,
        now_ms: i64,
        dead_before_ms: i64,
    ) -> Result<Decisions, BrokerError> {
        let _ = (node, now_ms, dead_before_ms);
        Err(BrokerError::NotAvailable)
    }

    /// See [`crate::broker::lifecycle::Lifecycle::leave`].
    pub(crate) async fn lifecycle_leave(
        &self,
        node: &str,
        now_ms: i64,
    ) -> Result<Decisions, BrokerError> {
        let _ = (node, now_ms);
        Err(BrokerError::NotAvailable)
    }

    /// See [`crate::broker::lifecycle::Lifecycle::set_status`].
    pub(crate) async fn status_set(
        &self,
        users: &[String],
        field: StatusField,
        at: i64,
        ttl_s: i64,
    ) -> Result<(), BrokerError> {
        let _ = (users, field, at, ttl_s);
        Err(BrokerError::NotAvailable)
    }

    /// See [`crate::broker::lifecycle::Lifecycle::get_status`].
    pub(crate) async fn status_get(
        &self,
        users: &[String],
    ) -> Result<Vec<UserStatus>, BrokerError> {
        let _ = users;
        Err(BrokerError::NotAvailable)
    }

    /// See [`crate::broker::lifecycle::Lifecycle::delete_status`].
    pub(crate) async fn status_delete(&self, users: &[String]) -> Result<(), BrokerError> {
        let _ = users;
        Err(BrokerError::NotAvailable)
    }
}
