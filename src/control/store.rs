//! etcd access in flannel's schema: network config, subnet leases (created in transactions), keep-alive, watch.
//!
//! Each endpoint has a client of its own. A request goes to the member that answered last; when that member
//! cannot be reached it is retried on the next one, as etcd's own clients do, so one dead member among
//! several costs nothing, and a request fails only when no member answers.

use std::future::Future;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};

use crate::control::lease::{parse_subnet_key, subnet_key, LeaseAttrs, LeaseValueError, SubnetKey};

/// Default etcd key prefix, as flannel's.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// How long one unary etcd request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach etcd: flanneld's `--etcd-*` flags.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub cafile: Option<String>,
    pub certfile: Option<String>,
    pub keyfile: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// What went wrong talking to etcd; messages say what was being done and where.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("bad etcd settings: {0}")]
    Settings(String),
    #[error("etcd at {endpoints} did not answer within {secs}s while {doing}; is etcd running and is --etcd-endpoints right?", secs = REQUEST_TIMEOUT.as_secs())]
    Timeout { endpoints: String, doing: String },
    #[error("etcd at {endpoints} failed while {doing}: {reason}")]
    Etcd {
        endpoints: String,
        doing: String,
        reason: String,
    },
}

/// A lease as stored in etcd.
#[derive(Debug, Clone)]
pub struct StoredLease {
    pub subnet: SubnetKey,
    /// The parsed value, or why it could not be parsed.
    pub attrs: Result<LeaseAttrs, LeaseValueError>,
    /// The etcd lease the key is attached to (0 = none: a reservation).
    pub etcd_lease: i64,
    pub mod_revision: i64,
}

/// One etcd member's endpoint and its client, made on first use.
struct Member {
    url: String,
    client: tokio::sync::OnceCell<Client>,
}

/// etcd in flannel's layout under one prefix.
#[derive(Clone)]
pub struct Store {
    members: Arc<[Member]>,
    options: ConnectOptions,
    /// The member that answered last: the first one tried.
    preferred: Arc<AtomicUsize>,
    prefix: String,
    endpoints: String,
}

impl Store {
    /// Builds a client; the connection itself is made lazily by the first request.
    pub async fn connect(opts: &EtcdOptions) -> Result<Self, StoreError> {
        let endpoints = opts.endpoints.join(",");
        if opts.endpoints.is_empty() {
            return Err(StoreError::Settings(
                "no etcd endpoint given; set --etcd-endpoints".into(),
            ));
        }
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        let tls_wanted = opts.cafile.is_some() || opts.certfile.is_some() || opts.keyfile.is_some();
        if tls_wanted {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &opts.cafile {
                tls =
                    tls.ca_certificate(Certificate::from_pem(read("CA file (--etcd-cafile)", ca)?));
            }
            match (&opts.certfile, &opts.keyfile) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(Identity::from_pem(
                        read("client certificate (--etcd-certfile)", c)?,
                        read("client key (--etcd-keyfile)", k)?,
                    ))
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Settings(
                        "--etcd-certfile and --etcd-keyfile must be given together".into(),
                    ))
                }
            }
            co = co.with_tls(tls);
        }
        if let (Some(u), Some(p)) = (&opts.username, &opts.password) {
            co = co.with_user(u.clone(), p.clone());
        }
        let mut eps = Vec::new();
        for e in &opts.endpoints {
            if tls_wanted && e.starts_with("http://") {
                return Err(StoreError::Settings(format!(
                    "endpoint {e} is plain http but TLS files were given; use https://"
                )));
            }
            eps.push(e.clone());
        }
        let prefix = opts.prefix.trim_end_matches('/').to_string();
        let members = eps
            .into_iter()
            .map(|url| Member {
                url,
                client: tokio::sync::OnceCell::new(),
            })
            .collect();
        Ok(Store {
            members,
            options: co,
            preferred: Arc::new(AtomicUsize::new(0)),
            prefix,
            endpoints,
        })
    }

    /// Runs `call` on the member that answered last, then on each other member in turn while the member
    /// cannot be reached (connection refused, timed out, unavailable). An answer from etcd itself, even an
    /// error, ends the round. The error returned is the last member's.
    async fn request<T, F, Fut>(&self, doing: &str, call: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.members.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let m = &self.members[i];
            let attempt = async {
                let client = m
                    .client
                    .get_or_try_init(|| {
                        Client::connect([m.url.as_str()], Some(self.options.clone()))
                    })
                    .await?;
                call(client.clone()).await
            };
            let err = match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
                Ok(Ok(v)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(e)) if !unreachable(&e) => {
                    return Err(StoreError::Etcd {
                        endpoints: m.url.clone(),
                        doing: doing.to_string(),
                        reason: short_reason(&e),
                    })
                }
                Ok(Err(e)) => StoreError::Etcd {
                    endpoints: self.tried(n),
                    doing: doing.to_string(),
                    reason: short_reason(&e),
                },
                Err(_) => StoreError::Timeout {
                    endpoints: self.tried(n),
                    doing: doing.to_string(),
                },
            };
            tracing::debug!(endpoint = %m.url, "etcd member unreachable while {doing}: {err}");
            last = Some(err);
        }
        Err(last.expect("at least one endpoint"))
    }

    /// The endpoints a failed round tried, for its error message.
    fn tried(&self, n: usize) -> String {
        if n == 1 {
            self.endpoints.clone()
        } else {
            format!("{} (no member answered)", self.endpoints)
        }
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn lease_key(&self, subnet: &SubnetKey) -> String {
        format!("{}{}", self.subnets_prefix(), subnet_key(subnet))
    }

    /// One range read (with failover, as every request).
    async fn get(
        &self,
        doing: &str,
        key: String,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, StoreError> {
        self.request(doing, |mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.get(key, options).await }
        })
        .await
    }

    /// The network config's JSON text, or None if the key does not exist.
    pub async fn get_config(&self) -> Result<Option<String>, StoreError> {
        let resp = self
            .get("reading the network config", self.config_key(), None)
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Writes the network config's JSON text.
    pub async fn put_config(&self, json: &str) -> Result<(), StoreError> {
        let key = self.config_key();
        self.request("writing the network config", |mut c| {
            let (key, json) = (key.clone(), json.to_string());
            async move { c.put(key, json, None).await }
        })
        .await?;
        Ok(())
    }

    /// Every lease under `<prefix>/subnets/` and the revision of that snapshot.
    pub async fn list_leases(&self) -> Result<(Vec<StoredLease>, i64), StoreError> {
        let resp = self
            .get(
                "listing subnet leases",
                self.subnets_prefix(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let leases = resp
            .kvs()
            .iter()
            .filter_map(|kv| self.stored_lease(kv.key(), kv.value(), kv.lease(), kv.mod_revision()))
            .collect();
        Ok((leases, rev))
    }

    /// The lease for one subnet, if its key exists.
    pub async fn get_lease(&self, subnet: &SubnetKey) -> Result<Option<StoredLease>, StoreError> {
        let resp = self
            .get("reading our subnet lease", self.lease_key(subnet), None)
            .await?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| self.stored_lease(kv.key(), kv.value(), kv.lease(), kv.mod_revision())))
    }

    /// Parses a key/value under the subnets prefix; None for keys that are not lease keys.
    pub fn stored_lease(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        rev: i64,
    ) -> Option<StoredLease> {
        let subnet = self.subnet_of_key(key)?;
        Some(StoredLease {
            subnet,
            attrs: LeaseAttrs::from_json(value),
            etcd_lease: lease,
            mod_revision: rev,
        })
    }

    /// The subnet a key under the subnets prefix names.
    pub fn subnet_of_key(&self, key: &[u8]) -> Option<SubnetKey> {
        let key = std::str::from_utf8(key).ok()?;
        parse_subnet_key(key.strip_prefix(&self.subnets_prefix())?)
    }

    /// Grants an etcd lease (TTL) for a subnet key.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let ttl = ttl.as_secs().max(1) as i64;
        let resp = self
            .request("granting an etcd lease", |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .await?;
        Ok(resp.id())
    }

    /// Revokes an etcd lease (deleting keys attached to it).
    pub async fn revoke(&self, id: i64) -> Result<(), StoreError> {
        self.request("revoking an etcd lease", |mut c| async move {
            c.lease_revoke(id).await
        })
        .await?;
        Ok(())
    }

    /// Writes the lease for `subnet` attached to etcd lease `id`, but only if the key does not exist
    /// (`expect_rev == 0`) or was last modified at `expect_rev`; `exclusive`: only if no key at all starts
    /// with the subnet that names the host (`10.5.60.0-24`, which a dual-stack key with another IPv6 half
    /// also starts with). Returns false if another host won.
    pub async fn put_lease_if(
        &self,
        subnet: &SubnetKey,
        attrs: &LeaseAttrs,
        id: i64,
        expect_rev: i64,
        exclusive: bool,
    ) -> Result<bool, StoreError> {
        let key = self.lease_key(subnet);
        let cmp = if exclusive && subnet.v4.is_some() {
            let v4_only = self.lease_key(&SubnetKey {
                v6: None,
                ..*subnet
            });
            Compare::version(v4_only, CompareOp::Equal, 0).with_prefix()
        } else if expect_rev == 0 {
            Compare::version(key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.clone(), CompareOp::Equal, expect_rev)
        };
        let txn = Txn::new().when([cmp]).and_then([TxnOp::put(
            key,
            attrs.to_json(),
            Some(PutOptions::new().with_lease(id)),
        )]);
        let resp = self
            .request("writing our subnet lease", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp.succeeded())
    }

    /// Renews etcd lease `id` once; returns the TTL left (0 or less: the lease has expired).
    pub async fn keep_alive(&self, id: i64) -> Result<i64, StoreError> {
        self.request("renewing our subnet lease", |mut c| async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            Ok(stream.message().await?.map(|r| r.ttl()).unwrap_or(0))
        })
        .await
    }

    /// Seconds left on etcd lease `id` (negative: expired or not found).
    pub async fn time_to_live(&self, id: i64) -> Result<i64, StoreError> {
        let resp = self
            .request("reading lease TTLs", |mut c| async move {
                c.lease_time_to_live(id, None).await
            })
            .await?;
        Ok(resp.ttl())
    }

    /// Watches the subnets prefix from revision `from_rev` (inclusive).
    pub async fn watch_leases(&self, from_rev: i64) -> Result<WatchStream, StoreError> {
        let prefix = self.subnets_prefix();
        self.request("starting the lease watch", |mut c| {
            let prefix = prefix.clone();
            async move {
                c.watch(
                    prefix,
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(from_rev)
                            .with_progress_notify(),
                    ),
                )
                .await
            }
        })
        .await
    }

    /// Whether `attrs` names this host (`me`: `LeaseAttrs::owner` of our lease).
    pub fn is_ours(attrs: &Result<LeaseAttrs, LeaseValueError>, me: std::net::IpAddr) -> bool {
        matches!(attrs, Ok(a) if a.owner() == me)
    }
}

fn read(what: &'static str, path: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::File {
        what,
        path: path.to_string(),
        source,
    })
}

/// Whether an error means the member could not be reached (so another member may answer), rather than an
/// answer from etcd.
fn unreachable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
        ),
        _ => false,
    }
}

/// A one-line reason for an etcd client error: the gRPC message and the innermost cause.
fn short_reason(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let mut innermost: Option<&dyn std::error::Error> = std::error::Error::source(status);
            while let Some(next) = innermost.and_then(|c| c.source()) {
                innermost = Some(next);
            }
            match innermost {
                Some(c) => format!("{} ({c})", status.message()),
                None => status.message().to_string(),
            }
        }
        other => other.to_string(),
    }
}
