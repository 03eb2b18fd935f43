//! The gRPC plumbing every module shares: requests scoped to Marina's namespace (and to a
//! lease while one is held), and tonic statuses turned into [`RuntimeError`]s that say which
//! operation failed on what.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest};
use marina_runtime::{RuntimeError, RuntimeKind};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// The metadata key containerd reads the namespace of a request from.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The metadata key that puts what a request creates into a lease.
const LEASE_HEADER: &str = "containerd-lease";
/// The lease label after which containerd's collector drops a lease we never released
/// (a crashed import must not pin its blobs forever).
const LEASE_EXPIRE_LABEL: &str = "containerd.io/gc.expire";
/// How long a lease may outlive a crashed holder.
const LEASE_LIFETIME: Duration = Duration::from_secs(3600);

/// A containerd connection scoped to one namespace, optionally inside a lease.
#[derive(Clone)]
pub(crate) struct Containerd {
    channel: Channel,
    namespace: String,
    namespace_header: AsciiMetadataValue,
    lease_header: Option<AsciiMetadataValue>,
}

impl Containerd {
    pub fn new(channel: Channel, namespace: &str) -> Result<Self, RuntimeError> {
        let namespace_header = MetadataValue::try_from(namespace).map_err(|_| {
            RuntimeError::InvalidSpec(format!("containerd namespace {namespace:?} is not valid gRPC metadata"))
        })?;
        Ok(Containerd { channel, namespace: namespace.to_owned(), namespace_header, lease_header: None })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `message` as a request in our namespace (and lease, if this handle holds one).
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(NAMESPACE_HEADER, self.namespace_header.clone());
        if let Some(lease) = &self.lease_header {
            request.metadata_mut().insert(LEASE_HEADER, lease.clone());
        }
        request
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    pub fn content(&self) -> ContentClient<Channel> {
        // Manifests and configs are small, layers are read in chunks; containerd's own limit
        // for a message is 16 MiB.
        ContentClient::new(self.channel.clone()).max_decoding_message_size(16 << 20)
    }

    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }

    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }

    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    /// Takes a lease: until it is released (or expires, should we crash), containerd's
    /// garbage collector keeps every blob and snapshot created through the returned handle,
    /// even before anything else refers to them.
    pub async fn lease(&self, purpose: &str) -> Result<Lease, RuntimeError> {
        let expires = prost_types::Timestamp::from(SystemTime::now() + LEASE_LIFETIME);
        let request = CreateLeaseRequest {
            id: unique_id(&format!("marina-{purpose}")),
            labels: HashMap::from([(LEASE_EXPIRE_LABEL.to_owned(), expires.to_string())]),
        };
        // A lease is created outside any lease this handle may hold.
        let plain = Containerd { lease_header: None, ..self.clone() };
        let lease = LeasesClient::new(self.channel.clone())
            .create(plain.request(request))
            .await
            .map_err(|status| rpc_error("lease create", purpose, &status))?
            .into_inner()
            .lease
            .ok_or_else(|| RuntimeError::backend(RuntimeKind::Containerd, "lease create: empty answer"))?;
        let header = MetadataValue::try_from(lease.id.as_str())
            .map_err(|_| RuntimeError::backend(RuntimeKind::Containerd, "lease create: unusable lease id"))?;
        let scoped = Containerd { lease_header: Some(header), ..self.clone() };
        Ok(Lease { id: lease.id, scoped })
    }
}

/// A held lease; [`Lease::release`] it when what it protects is referenced from elsewhere.
pub(crate) struct Lease {
    id: String,
    scoped: Containerd,
}

impl Lease {
    /// The connection whose requests put what they create into this lease.
    pub fn client(&self) -> &Containerd {
        &self.scoped
    }

    /// Deletes the lease. Failing to is only logged: the lease expires on its own.
    pub async fn release(self) {
        let plain = Containerd { lease_header: None, ..self.scoped.clone() };
        let request = plain.request(DeleteLeaseRequest { id: self.id.clone(), sync: false });
        if let Err(status) = LeasesClient::new(plain.channel.clone()).delete(request).await {
            tracing::warn!(lease = %self.id, error = %status.message(), "could not release a containerd lease; it expires on its own");
        }
    }
}

/// A backend error naming the operation, what it was about, and containerd's answer.
pub(crate) fn rpc_error(operation: &str, subject: &str, status: &Status) -> RuntimeError {
    RuntimeError::backend(
        RuntimeKind::Containerd,
        format!("{operation} {subject}: {:?}: {}", status.code(), status.message()),
    )
}

pub(crate) fn backend_error(message: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::backend(RuntimeKind::Containerd, message)
}

pub(crate) fn is_not_found(status: &Status) -> bool {
    status.code() == Code::NotFound
}

pub(crate) fn is_already_exists(status: &Status) -> bool {
    status.code() == Code::AlreadyExists
}

/// An id no other process or call uses: containerd refs, exec ids and lease ids must not
/// collide between agents, test processes and concurrent calls.
pub(crate) fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:x}-{count}", std::process::id())
}
