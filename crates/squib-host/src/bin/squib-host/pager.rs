//! The pager process: snapshot templates, restore sessions, and the control API.
//!
//! A *template* is a snapshot's memory (a file, or a page server) behind one shared
//! [`CachedSource`], so however many VMs restore from it at once, each block is read from the
//! source once while it is cached. A *session* is one VMM restoring from a template: a handler
//! socket bound for it, the handshake, then a fault server. The first session of a template
//! records the order its pages were first touched; later sessions replay it as prewarm.
//!
//! Every session's userfaultfd, VMM pidfd and connection are copied to the keeper as soon as
//! the handshake is accepted, so a new pager process can take the session over.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use platform_primitives::creds::peer_credentials;
use platform_primitives::notify::SelfNotify;
use platform_primitives::prom::Exposition;
use platform_primitives::uds::{SocketPath, UdsBinder};
use serde_json::{Map, Value, json};
use squib_host::firecracker::{
    GuestRegionUffdMapping, HandlerConfig, Session, VmmFds, accept_handshake,
};
use squib_host::{
    CacheConfig, CacheStats, CachedSource, FilePageSource, PageRequest, PageServerAddr,
    PageServerConfig, PageServerSource, PageSource, PageSourceError, PagerConfig,
    PagerStatsSnapshot, PrewarmList,
};

use crate::http::{Request, Response, read_request, write_response};
use crate::vault;

/// Most API connections served at once.
const MAX_API_CLIENTS: usize = 32;
/// Most templates and sessions.
const MAX_TEMPLATES: usize = 256;
const MAX_SESSIONS: usize = 1024;
/// Ended sessions kept for listing.
const MAX_ENDED: usize = 256;

/// Settings of the pager process.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) state_dir: PathBuf,
    pub(crate) cache_budget: u64,
}

/// Where a template's pages come from: the shared block cache in front of its source, or —
/// for a local memory file with `"cache": false` — the file itself, whose pages the kernel's
/// page cache shares between sessions.
#[derive(Debug)]
enum TemplateSource {
    Cached(CachedSource<Box<dyn PageSource>>),
    File {
        file: FilePageSource,
        reads: AtomicU64,
        bytes: AtomicU64,
    },
}

impl TemplateSource {
    fn stats(&self) -> CacheStats {
        match self {
            Self::Cached(cache) => cache.stats(),
            Self::File { reads, bytes, .. } => {
                let mut stats = CacheStats::default();
                stats.source_reads = reads.load(Ordering::Relaxed);
                stats.source_bytes = bytes.load(Ordering::Relaxed);
                stats
            }
        }
    }

    fn source(&self) -> &dyn PageSource {
        match self {
            Self::Cached(cache) => cache,
            Self::File { file, .. } => file,
        }
    }

    fn counted(&self, len: usize) {
        if let Self::File { reads, bytes, .. } = self {
            reads.fetch_add(1, Ordering::Relaxed);
            bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
    }
}

impl PageSource for TemplateSource {
    fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        self.counted(req.len);
        self.source().fetch(req)
    }

    fn fetch_background(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        self.counted(req.len);
        self.source().fetch_background(req)
    }

    fn known_zero(&self, offset: u64, len: usize) -> bool {
        self.source().known_zero(offset, len)
    }

    fn len_hint(&self) -> Option<u64> {
        self.source().len_hint()
    }

    fn recycle(&self, bytes: Bytes) {
        self.source().recycle(bytes);
    }

    fn is_local(&self) -> bool {
        self.source().is_local()
    }
}

struct Template {
    name: String,
    spec: Value,
    source: Arc<TemplateSource>,
    /// The first-touch order recorded from the first session that finished.
    working_set: Mutex<Option<PrewarmList>>,
}

impl Template {
    fn open(name: &str, spec: &Value, budget: u64) -> Result<Self, Response> {
        // A local file is read through the kernel's page cache by default: measured faster
        // for concurrent restores than the block cache (squib-host's service bench), with no
        // second copy of the snapshot in this process. A page server always goes through the
        // block cache, which is then the only thing that keeps its pages from being fetched
        // once per session.
        let cached = spec["cache"]
            .as_bool()
            .unwrap_or(spec["mem_file"].is_null());
        if !cached {
            let Some(path) = spec["mem_file"].as_str() else {
                return Err(Response::error(
                    400,
                    "\"cache\": false needs a mem_file (a page server has no page cache of its own)",
                    Some("cache"),
                ));
            };
            let file = FilePageSource::open(path).map_err(|e| {
                Response::error(400, format!("cannot open {path}: {e}"), Some("mem_file"))
            })?;
            return Ok(Self {
                name: name.to_owned(),
                spec: spec.clone(),
                source: Arc::new(TemplateSource::File {
                    file,
                    reads: AtomicU64::new(0),
                    bytes: AtomicU64::new(0),
                }),
                working_set: Mutex::new(None),
            });
        }
        let inner: Box<dyn PageSource> = if let Some(path) = spec["mem_file"].as_str() {
            Box::new(FilePageSource::open(path).map_err(|e| {
                Response::error(400, format!("cannot open {path}: {e}"), Some("mem_file"))
            })?)
        } else {
            let addr = spec["page_server"].as_str().unwrap_or_default();
            let addr = match addr.split_once(':') {
                Some(("unix", p)) => PageServerAddr::Unix(p.into()),
                Some(("tcp", a)) => PageServerAddr::Tcp(a.into()),
                _ => {
                    return Err(Response::error(
                        400,
                        "page_server must be unix:/path or tcp:host:port",
                        Some("page_server"),
                    ));
                }
            };
            let len = spec["len"].as_u64().unwrap_or(0);
            Box::new(
                PageServerSource::connect_to(addr.clone(), PageServerConfig::default())
                    .map_err(|e| {
                        Response::error(
                            400,
                            format!("cannot reach the page server {addr}: {e}"),
                            Some("page_server"),
                        )
                    })?
                    .with_len(len),
            )
        };
        let source = CachedSource::new(
            inner,
            CacheConfig {
                budget,
                ..CacheConfig::default()
            },
        )
        .map_err(|e| Response::error(400, e.to_string(), Some("len")))?;
        Ok(Self {
            name: name.to_owned(),
            spec: spec.clone(),
            source: Arc::new(TemplateSource::Cached(source)),
            working_set: Mutex::new(None),
        })
    }
}

enum State {
    /// Bound, waiting for the VMM.
    Waiting,
    Serving(Session),
    Ended(String),
}

struct SessionEntry {
    id: String,
    template: Arc<Template>,
    socket: PathBuf,
    prewarm: bool,
    background: bool,
    created: Instant,
    pid: Mutex<Option<u32>>,
    state: Mutex<State>,
    stop: AtomicBool,
    /// A drain was asked for: every page is installed in the background, and the session
    /// says `drained` once its VMM no longer needs the template's source.
    draining: AtomicBool,
}

impl SessionEntry {
    fn new(
        id: &str,
        template: Arc<Template>,
        socket: PathBuf,
        prewarm: bool,
        background: bool,
    ) -> Self {
        Self {
            id: id.to_owned(),
            template,
            socket,
            prewarm,
            background,
            created: Instant::now(),
            pid: Mutex::new(None),
            state: Mutex::new(State::Waiting),
            stop: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    fn meta(&self, mappings: &[GuestRegionUffdMapping]) -> Value {
        json!({
            "id": self.id,
            "template": self.template.name,
            "socket": self.socket,
            "prewarm": self.prewarm,
            "background": self.background,
            "draining": self.draining.load(Ordering::Acquire),
            "mappings": mappings.iter().map(|m| json!([
                m.base_host_virt_addr, m.size, m.offset, m.page_size
            ])).collect::<Vec<_>>(),
        })
    }

    /// Whether every page of the session's memory is installed (its VMM needs nothing more
    /// from the template's source).
    fn populated(&self) -> bool {
        matches!(&*lock(&self.state), State::Serving(s) if s.pager().is_populated())
    }

    fn stats(&self) -> Option<PagerStatsSnapshot> {
        match &*lock(&self.state) {
            State::Serving(s) => Some(s.pager().stats()),
            _ => None,
        }
    }

    fn state_name(&self) -> String {
        match &*lock(&self.state) {
            State::Waiting => "waiting".into(),
            State::Serving(s) if self.draining.load(Ordering::Acquire) => {
                if s.pager().is_populated() {
                    "drained".into()
                } else {
                    "draining".into()
                }
            }
            State::Serving(_) => "serving".into(),
            State::Ended(why) => format!("ended: {why}"),
        }
    }

    fn pager_config(&self) -> PagerConfig {
        let prewarm = if self.prewarm {
            lock(&self.template.working_set).clone().unwrap_or_default()
        } else {
            PrewarmList::default()
        };
        PagerConfig {
            prewarm,
            background: self.background,
            ..PagerConfig::default()
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct Pager {
    opts: Options,
    vault: UnixDatagram,
    templates: RwLock<BTreeMap<String, Arc<Template>>>,
    sessions: Mutex<BTreeMap<String, Arc<SessionEntry>>>,
    ended: Mutex<Vec<String>>,
    api_clients: AtomicUsize,
    upgrading: AtomicBool,
    started: Instant,
}

impl Pager {
    /// Starts from the keeper's hand-over on `vault`: the API listener, then the sessions.
    pub(crate) fn run(opts: Options, vault: UnixDatagram) -> Result<(), String> {
        std::fs::create_dir_all(&opts.state_dir)
            .map_err(|e| format!("cannot create {}: {e}", opts.state_dir.display()))?;
        let pager = Arc::new(Self {
            opts,
            vault,
            templates: RwLock::default(),
            sessions: Mutex::default(),
            ended: Mutex::default(),
            api_clients: AtomicUsize::new(0),
            upgrading: AtomicBool::new(false),
            started: Instant::now(),
        });
        pager.load_templates();
        let mut api = None;
        let mut adopted = 0;
        let mut buf = vault::buffer();
        loop {
            let msg = vault::recv(&pager.vault, &mut buf, Some(Duration::from_secs(10)))
                .map_err(|e| format!("the keeper: {e}"))?
                .ok_or("the keeper sent nothing for 10 s")?;
            match msg.body["op"].as_str() {
                Some("api") => api = msg.fds.into_iter().next().map(UnixListener::from),
                Some("adopt") => {
                    if pager.adopt(&msg.body["session"], msg.fds) {
                        adopted += 1;
                    }
                }
                Some("end") => break,
                other => return Err(format!("unexpected message from the keeper: {other:?}")),
            }
        }
        let api = api.ok_or("the keeper sent no API socket")?;
        tracing::info!(adopted, "pager ready");
        let notify = match SelfNotify::from_env().transpose() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY_SOCKET is unusable");
                None
            }
        };
        if let Some(n) = &notify {
            let _ = n.send(&format!("READY=1\nSTATUS={}", pager.status_line()));
        }
        {
            let pager = pager.clone();
            std::thread::spawn(move || pager.heartbeat(notify));
        }
        for conn in api.incoming() {
            let Ok(conn) = conn else { continue };
            if pager.api_clients.fetch_add(1, Ordering::AcqRel) >= MAX_API_CLIENTS {
                pager.api_clients.fetch_sub(1, Ordering::AcqRel);
                let mut conn = conn;
                write_response(
                    &mut conn,
                    &Response::error(503, "too many API clients", None),
                );
                continue;
            }
            let pager = pager.clone();
            std::thread::spawn(move || {
                pager.serve_api(conn);
                pager.api_clients.fetch_sub(1, Ordering::AcqRel);
            });
        }
        Ok(())
    }

    fn status_line(&self) -> String {
        let sessions = lock(&self.sessions);
        let serving = sessions
            .values()
            .filter(|s| matches!(&*lock(&s.state), State::Serving(_)))
            .count();
        format!(
            "{} templates, {serving} sessions serving",
            self.templates.read().map(|t| t.len()).unwrap_or(0)
        )
    }

    fn heartbeat(&self, mut notify: Option<SelfNotify>) {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            if let Some(n) = &mut notify {
                let _ = n.ping_if_due();
                let _ = n.send(&format!("STATUS={}", self.status_line()));
            }
        }
    }

    // ---- templates ------------------------------------------------------------------------

    fn templates_file(&self) -> PathBuf {
        self.opts.state_dir.join("templates.json")
    }

    fn working_set_file(&self, name: &str) -> PathBuf {
        self.opts.state_dir.join(format!("{name}.ws"))
    }

    fn load_templates(&self) {
        let Ok(text) = std::fs::read(self.templates_file()) else {
            return;
        };
        let Ok(Value::Object(all)) = serde_json::from_slice::<Value>(&text) else {
            tracing::warn!(file = %self.templates_file().display(), "unreadable templates file");
            return;
        };
        let mut templates = self.templates.write().unwrap_or_else(|p| p.into_inner());
        for (name, spec) in all {
            match Template::open(&name, &spec, self.opts.cache_budget) {
                Ok(t) => {
                    *lock(&t.working_set) = PrewarmList::load(self.working_set_file(&name)).ok();
                    templates.insert(name, Arc::new(t));
                }
                Err(e) => tracing::warn!(template = %name, error = ?e.body, "cannot reopen"),
            }
        }
    }

    fn save_templates(&self, templates: &BTreeMap<String, Arc<Template>>) {
        let all: Map<String, Value> = templates
            .iter()
            .map(|(k, t)| (k.clone(), t.spec.clone()))
            .collect();
        let tmp = self.templates_file().with_extension("tmp");
        let written = std::fs::write(&tmp, Value::Object(all).to_string())
            .and_then(|()| std::fs::rename(&tmp, self.templates_file()));
        if let Err(e) = written {
            tracing::error!(file = %self.templates_file().display(), error = %e, "cannot save templates");
        }
    }

    fn put_template(&self, name: &str, body: &Value, uid: u32) -> Response {
        let Value::Object(obj) = body else {
            return Response::error(400, "expected a JSON object", None);
        };
        if let Some(k) = obj
            .keys()
            .find(|k| !["mem_file", "page_server", "len", "cache"].contains(&k.as_str()))
        {
            return Response::error(400, format!("unknown field `{k}`"), Some(k));
        }
        if obj.get("cache").is_some_and(|c| !c.is_boolean()) {
            return Response::error(400, "must be true or false", Some("cache"));
        }
        match (obj.get("mem_file"), obj.get("page_server")) {
            (Some(Value::String(path)), None) => {
                if let Err(resp) = readable_by(Path::new(path), uid) {
                    return resp;
                }
            }
            (None, Some(Value::String(_))) => {
                if !obj.get("len").is_some_and(Value::is_u64) {
                    return Response::error(
                        400,
                        "a page-server template needs `len`, the snapshot's length in bytes",
                        Some("len"),
                    );
                }
            }
            (Some(_), Some(_)) => {
                return Response::error(400, "give `mem_file` or `page_server`, not both", None);
            }
            (Some(_), None) => return Response::error(400, "must be a path", Some("mem_file")),
            (None, Some(_)) => {
                return Response::error(400, "must be a string", Some("page_server"));
            }
            (None, None) => {
                return Response::error(400, "missing `mem_file` or `page_server`", None);
            }
        }
        let mut templates = self.templates.write().unwrap_or_else(|p| p.into_inner());
        if templates.contains_key(name) {
            return Response::error(409, format!("template {name} exists"), Some("name"));
        }
        if templates.len() >= MAX_TEMPLATES {
            return Response::error(409, "too many templates", None);
        }
        let template = match Template::open(name, body, self.opts.cache_budget) {
            Ok(t) => t,
            Err(resp) => return resp,
        };
        *lock(&template.working_set) = PrewarmList::load(self.working_set_file(name)).ok();
        templates.insert(name.to_owned(), Arc::new(template));
        self.save_templates(&templates);
        Response::no_content()
    }

    fn delete_template(&self, name: &str) -> Response {
        let in_use = lock(&self.sessions)
            .values()
            .any(|s| s.template.name == name && !matches!(&*lock(&s.state), State::Ended(_)));
        if in_use {
            return Response::error(
                409,
                format!("template {name} has live sessions"),
                Some("name"),
            );
        }
        let mut templates = self.templates.write().unwrap_or_else(|p| p.into_inner());
        if templates.remove(name).is_none() {
            return Response::error(404, format!("no template {name}"), Some("name"));
        }
        self.save_templates(&templates);
        let _ = std::fs::remove_file(self.working_set_file(name));
        Response::no_content()
    }

    fn list_templates(&self) -> Value {
        let templates = self.templates.read().unwrap_or_else(|p| p.into_inner());
        Value::Array(
            templates
                .values()
                .map(|t| {
                    let s = t.source.stats();
                    json!({
                        "name": t.name,
                        "source": t.spec,
                        "len": t.source.len_hint(),
                        "source_reads": s.source_reads,
                        "source_bytes": s.source_bytes,
                        "cache_hits": s.hits,
                        "cache_misses": s.misses,
                        "cached_bytes": s.cached_bytes,
                        "working_set_pages": lock(&t.working_set).as_ref().map_or(0, PrewarmList::len),
                    })
                })
                .collect(),
        )
    }

    // ---- sessions -------------------------------------------------------------------------

    fn put_session(self: &Arc<Self>, id: &str, body: &Value, uid: u32) -> Response {
        let Value::Object(obj) = body else {
            return Response::error(400, "expected a JSON object", None);
        };
        if let Some(k) = obj
            .keys()
            .find(|k| !["template", "socket", "prewarm", "background"].contains(&k.as_str()))
        {
            return Response::error(400, format!("unknown field `{k}`"), Some(k));
        }
        let Some(template) = obj.get("template").and_then(Value::as_str) else {
            return Response::error(400, "missing `template`", Some("template"));
        };
        let Some(socket) = obj.get("socket").and_then(Value::as_str).map(PathBuf::from) else {
            return Response::error(400, "missing `socket`", Some("socket"));
        };
        let flag = |name: &str| match obj.get(name) {
            None => Ok(true),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(Response::error(400, "must be true or false", Some(name))),
        };
        let (prewarm, background) = match (flag("prewarm"), flag("background")) {
            (Ok(p), Ok(b)) => (p, b),
            (Err(r), _) | (_, Err(r)) => return r,
        };
        if !socket.is_absolute() {
            return Response::error(400, "must be an absolute path", Some("socket"));
        }
        if let Err(resp) = owned_dir(&socket, uid) {
            return resp;
        }
        let Some(template) = self
            .templates
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(template)
            .cloned()
        else {
            return Response::error(404, format!("no template {template}"), Some("template"));
        };
        let mut sessions = lock(&self.sessions);
        if sessions.contains_key(id) {
            return Response::error(409, format!("session {id} exists"), Some("id"));
        }
        if sessions
            .values()
            .any(|s| s.socket == socket && !matches!(&*lock(&s.state), State::Ended(_)))
        {
            return Response::error(
                409,
                format!("{} is another live session's socket", socket.display()),
                Some("socket"),
            );
        }
        if sessions.len() >= MAX_SESSIONS {
            return Response::error(409, "too many sessions", None);
        }
        let (listener, path) = match UdsBinder::new("squib-host session").bind_listener(&socket) {
            Ok(l) => l.into_parts(),
            Err(e) => return Response::error(409, e.to_string(), Some("socket")),
        };
        let entry = Arc::new(SessionEntry::new(id, template, socket, prewarm, background));
        // The keeper holds the listener too, so a VMM that connects while the pager restarts
        // waits in the backlog for the next one.
        let mut meta = entry.meta(&[]);
        meta["waiting"] = json!(true);
        if let Err(e) = vault::send(
            &self.vault,
            &json!({"op": "keep", "session": meta}),
            &[listener.as_fd()],
        ) {
            tracing::error!(session = %id, error = %e, "cannot hand the session's socket to the keeper");
        }
        sessions.insert(id.to_owned(), entry.clone());
        drop(sessions);
        let pager = self.clone();
        std::thread::spawn(move || pager.run_session(entry, listener, Some(path)));
        Response::json(201, &json!({ "id": id }))
    }

    /// Waits for the session's VMM, hands copies of its descriptors to the keeper, serves it
    /// until it exits.
    ///
    /// `path` removes the socket file once the VMM has connected; a session taken over from
    /// the keeper has none (its socket was bound by an earlier pager), so the file is removed
    /// by path.
    fn run_session(
        self: Arc<Self>,
        entry: Arc<SessionEntry>,
        listener: UnixListener,
        path: Option<SocketPath>,
    ) {
        let config = HandlerConfig {
            pager: entry.pager_config(),
            ..HandlerConfig::new(&entry.socket, "")
        };
        let _ = listener.set_nonblocking(true);
        let conn = loop {
            if entry.stop.load(Ordering::Acquire) {
                return self.end(&entry, "deleted before its VMM connected".into());
            }
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return self.end(&entry, format!("accept failed: {e}")),
            }
        };
        let _ = conn.set_nonblocking(false);
        // One VMM per session: the socket goes away once it has connected.
        drop(listener);
        match path {
            Some(path) => drop(path),
            None => {
                let _ = std::fs::remove_file(&entry.socket);
            }
        }
        let accepted = match accept_handshake(conn, &config, entry.template.source.len_hint()) {
            Ok(a) => a,
            Err(e) => {
                let why = platform_primitives::error::chain(&e);
                tracing::warn!(session = %entry.id, error = %why, "handshake refused");
                return self.end(&entry, format!("handshake refused: {why}"));
            }
        };
        *lock(&entry.pid) = Some(accepted.pid());
        match accepted.duplicate() {
            Ok(fds) => {
                let meta = entry.meta(accepted.mappings());
                let sent = vault::send(
                    &self.vault,
                    &json!({"op": "keep", "session": meta}),
                    &[fds.uffd.as_fd(), fds.pidfd.as_fd(), fds.conn.as_fd()],
                );
                if let Err(e) = sent {
                    tracing::error!(session = %entry.id, error = %e, "cannot hand the session to the keeper; it will not survive a pager restart");
                }
            }
            Err(e) => {
                tracing::error!(session = %entry.id, error = %e, "cannot copy the session's descriptors; it will not survive a pager restart");
            }
        }
        let source: Arc<dyn PageSource> = entry.template.source.clone();
        match accepted.serve(source, &config) {
            Ok(session) => {
                if entry.draining.load(Ordering::Acquire) {
                    session.pager().populate();
                }
                *lock(&entry.state) = State::Serving(session);
            }
            Err(e) => {
                return self.end(
                    &entry,
                    format!("cannot serve: {}", platform_primitives::error::chain(&e)),
                );
            }
        }
        self.watch(entry);
    }

    /// Takes over a session the keeper kept across a pager restart.
    fn adopt(self: &Arc<Self>, meta: &Value, fds: Vec<OwnedFd>) -> bool {
        let parse = || -> Option<(String, String, PathBuf, bool, bool, Vec<GuestRegionUffdMapping>)> {
            let mappings = meta["mappings"]
                .as_array()?
                .iter()
                .map(|m| {
                    Some(GuestRegionUffdMapping {
                        base_host_virt_addr: m[0].as_u64()?,
                        size: m[1].as_u64()?,
                        offset: m[2].as_u64()?,
                        page_size: m[3].as_u64()? as usize,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            Some((
                meta["id"].as_str()?.to_owned(),
                meta["template"].as_str()?.to_owned(),
                PathBuf::from(meta["socket"].as_str()?),
                meta["prewarm"].as_bool()?,
                meta["background"].as_bool()?,
                mappings,
            ))
        };
        if meta["waiting"] == true {
            return self.adopt_waiting(meta, fds);
        }
        let parsed = parse();
        let fds = <[OwnedFd; 3]>::try_from(fds);
        let (Some((id, template, socket, prewarm, background, mappings)), Ok([uffd, pidfd, conn])) =
            (parsed, fds)
        else {
            tracing::error!(?meta, "the keeper handed over a malformed session");
            return false;
        };
        let Some(template) = self
            .templates
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&template)
            .cloned()
        else {
            tracing::error!(session = %id, %template, "the session's template is gone");
            let _ = vault::send(&self.vault, &json!({"op": "forget", "id": id}), &[]);
            return false;
        };
        let entry = Arc::new(SessionEntry::new(
            &id, template, socket, prewarm, background,
        ));
        let source: Arc<dyn PageSource> = entry.template.source.clone();
        let config = PagerConfig {
            // The restore is under way: the pages it needs next are what its faults ask for.
            prewarm: PrewarmList::default(),
            ..entry.pager_config()
        };
        match Session::adopt(mappings, VmmFds { uffd, pidfd, conn }, source, config) {
            Ok(session) => {
                if meta["draining"] == true {
                    entry.draining.store(true, Ordering::Release);
                    session.pager().populate();
                }
                *lock(&entry.pid) = Some(session.peer_pid());
                *lock(&entry.state) = State::Serving(session);
                lock(&self.sessions).insert(id.clone(), entry.clone());
                tracing::info!(session = %id, "adopted");
                let pager = self.clone();
                std::thread::spawn(move || pager.watch(entry));
                true
            }
            Err(e) => {
                tracing::warn!(session = %id, error = %platform_primitives::error::chain(&e), "cannot adopt");
                let _ = vault::send(&self.vault, &json!({"op": "forget", "id": id}), &[]);
                false
            }
        }
    }

    /// Takes over a session whose VMM had not connected yet: its listening socket.
    fn adopt_waiting(self: &Arc<Self>, meta: &Value, fds: Vec<OwnedFd>) -> bool {
        let id = meta["id"].as_str().unwrap_or_default().to_owned();
        let template = self
            .templates
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(meta["template"].as_str().unwrap_or_default())
            .cloned();
        let (Some(template), Some(socket), Ok([listener])) = (
            template,
            meta["socket"].as_str().map(PathBuf::from),
            <[OwnedFd; 1]>::try_from(fds),
        ) else {
            tracing::error!(?meta, "cannot take over a waiting session");
            let _ = vault::send(&self.vault, &json!({"op": "forget", "id": id}), &[]);
            return false;
        };
        let flag = |k: &str| meta[k].as_bool().unwrap_or(true);
        let entry = Arc::new(SessionEntry::new(
            &id,
            template,
            socket,
            flag("prewarm"),
            flag("background"),
        ));
        entry
            .draining
            .store(meta["draining"] == true, Ordering::Release);
        lock(&self.sessions).insert(id, entry.clone());
        let pager = self.clone();
        std::thread::spawn(move || pager.run_session(entry, UnixListener::from(listener), None));
        true
    }

    /// Waits until the session's VMM exits (or the session is deleted), then ends it.
    fn watch(&self, entry: Arc<SessionEntry>) {
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let finished = match &*lock(&entry.state) {
                State::Serving(s) => s.is_finished(),
                _ => true,
            };
            if finished || entry.stop.load(Ordering::Acquire) {
                break;
            }
        }
        let state = std::mem::replace(&mut *lock(&entry.state), State::Waiting);
        let why = match state {
            State::Serving(session) => {
                let pager = session.pager().clone();
                let deleted = entry.stop.load(Ordering::Acquire);
                let result = if deleted {
                    session.shutdown()
                } else {
                    session.wait()
                };
                self.record_working_set(&entry, &pager);
                match result {
                    Ok(()) if deleted => "deleted".to_owned(),
                    Ok(()) => "the VMM exited".to_owned(),
                    Err(e) => platform_primitives::error::chain(&e),
                }
            }
            _ => "ended".to_owned(),
        };
        self.end(&entry, why);
    }

    /// The first session of a template to finish leaves its first-touch order for the next.
    fn record_working_set(&self, entry: &SessionEntry, pager: &squib_host::Pager) {
        let mut ws = lock(&entry.template.working_set);
        if ws.as_ref().is_some_and(|w| !w.is_empty()) {
            return;
        }
        let recorded = pager.working_set();
        if recorded.is_empty() {
            return;
        }
        let path = self.working_set_file(&entry.template.name);
        if let Err(e) = recorded.save(&path) {
            tracing::warn!(file = %path.display(), error = %e, "cannot save the working set");
        }
        *ws = Some(recorded);
    }

    fn end(&self, entry: &SessionEntry, why: String) {
        if !self.upgrading.load(Ordering::Acquire) {
            let _ = vault::send(&self.vault, &json!({"op": "forget", "id": entry.id}), &[]);
        }
        tracing::info!(session = %entry.id, reason = %why, "session ended");
        *lock(&entry.state) = State::Ended(why);
        let mut ended = lock(&self.ended);
        ended.push(entry.id.clone());
        if ended.len() > MAX_ENDED {
            let old = ended.remove(0);
            lock(&self.sessions).remove(&old);
        }
    }

    fn delete_session(&self, id: &str) -> Response {
        let Some(entry) = lock(&self.sessions).get(id).cloned() else {
            return Response::error(404, format!("no session {id}"), Some("id"));
        };
        if let State::Serving(session) = &*lock(&entry.state) {
            // A VMM whose pager stops serving would freeze for good: it is killed instead.
            tracing::info!(session = %id, pid = session.peer_pid(), "deleting a live session kills its VMM");
            if let Err(e) = session.kill_vmm() {
                tracing::warn!(session = %id, error = %e, "cannot kill the VMM");
            }
        }
        entry.stop.store(true, Ordering::Release);
        Response::no_content()
    }

    /// Installs every page of the session's memory in the background (whatever its
    /// `background` option), so that its VMM no longer depends on the template's source; the
    /// session's state goes `draining`, then `drained`. A session still waiting for its VMM
    /// drains as soon as the VMM connects. The drain survives a pager restart.
    fn drain_session(&self, id: &str) -> Response {
        let Some(entry) = lock(&self.sessions).get(id).cloned() else {
            return Response::error(404, format!("no session {id}"), Some("id"));
        };
        let state = lock(&entry.state);
        match &*state {
            State::Ended(why) => {
                return Response::error(409, format!("session {id} has ended: {why}"), Some("id"));
            }
            State::Serving(session) => session.pager().populate(),
            State::Waiting => {}
        }
        entry.draining.store(true, Ordering::Release);
        drop(state);
        // The keeper's copy of the session's description says so too, for the next pager.
        let _ = vault::send(
            &self.vault,
            &json!({"op": "note", "id": id, "set": {"draining": true}}),
            &[],
        );
        Response::json(202, &json!({ "id": id, "state": entry.state_name() }))
    }

    fn list_sessions(&self) -> Value {
        let sessions = lock(&self.sessions);
        Value::Array(
            sessions
                .values()
                .map(|s| {
                    let mut v = json!({
                        "id": s.id,
                        "template": s.template.name,
                        "socket": s.socket,
                        "state": s.state_name(),
                        "pid": *lock(&s.pid),
                        "prewarm": s.prewarm,
                        "background": s.background,
                        "populated": s.populated(),
                        "age_s": s.created.elapsed().as_secs(),
                    });
                    if let Some(st) = s.stats() {
                        v["faults"] = json!(st.faults);
                        v["bytes_served"] = json!(st.bytes_served);
                        v["failed_closed"] = json!(st.failed_closed);
                        v["prewarmed"] = json!(st.prewarmed);
                    }
                    v
                })
                .collect(),
        )
    }

    // ---- the API --------------------------------------------------------------------------

    fn serve_api(self: &Arc<Self>, mut conn: UnixStream) {
        let uid = peer_credentials(&conn).map_or(u32::MAX, |c| c.uid);
        let resp = match read_request(&mut conn) {
            // Once an upgrade is under way, the new pager answers: this one may still accept a
            // connection on the shared listener before it exits.
            Ok(_) if self.upgrading.load(Ordering::Acquire) => {
                Response::error(503, "handing over to a new pager process; retry", None)
            }
            Ok(req) => self.route(&req, uid),
            Err(resp) => resp,
        };
        write_response(&mut conn, &resp);
        if resp.status == 202 && self.upgrading.load(Ordering::Acquire) {
            // Let the keeper start the new binary; the sessions' faults wait meanwhile.
            let _ = vault::send(&self.vault, &json!({"op": "upgrade"}), &[]);
            std::process::exit(0);
        }
    }

    fn route(self: &Arc<Self>, req: &Request, uid: u32) -> Response {
        let body = || -> Result<Value, Response> {
            serde_json::from_slice(&req.body)
                .map_err(|e| Response::error(400, format!("the body is not JSON: {e}"), None))
        };
        let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        match (req.method.as_str(), parts.as_slice()) {
            ("GET", ["templates"]) => Response::json(200, &self.list_templates()),
            ("GET", ["sessions"]) => Response::json(200, &self.list_sessions()),
            ("GET", ["metrics"]) => Response::text(200, self.metrics()),
            ("GET", [""]) => Response::json(
                200,
                &json!({
                    "status": self.status_line(),
                    "pid": std::process::id(),
                    "uptime_s": self.started.elapsed().as_secs(),
                    "storage_read_bytes": storage_read_bytes(),
                }),
            ),
            ("PUT", ["templates", name]) => match (valid_name(name, "name"), body()) {
                (Ok(()), Ok(b)) => self.put_template(name, &b, uid),
                (Err(r), _) | (_, Err(r)) => r,
            },
            ("DELETE", ["templates", name]) => self.delete_template(name),
            ("PUT", ["sessions", id]) => match (valid_name(id, "id"), body()) {
                (Ok(()), Ok(b)) => self.put_session(id, &b, uid),
                (Err(r), _) | (_, Err(r)) => r,
            },
            ("DELETE", ["sessions", id]) => self.delete_session(id),
            ("POST", ["sessions", id, "drain"]) => self.drain_session(id),
            ("POST", ["upgrade"]) => {
                self.upgrading.store(true, Ordering::Release);
                Response::json(
                    202,
                    &json!({"status": "handing over to a new pager process"}),
                )
            }
            (_, ["templates" | "sessions" | "metrics" | "upgrade", ..]) => Response::error(
                405,
                format!("{} is not allowed on {}", req.method, req.path),
                None,
            ),
            _ => Response::error(404, format!("no such endpoint {}", req.path), None),
        }
    }

    fn metrics(&self) -> String {
        let mut page = Exposition::new();
        let templates = self.templates.read().unwrap_or_else(|p| p.into_inner());
        type TemplateFigure = fn(&squib_host::CacheStats) -> u64;
        let per_template: [(&str, &str, bool, TemplateFigure); 5] = [
            (
                "squib_template_source_reads_total",
                "Reads from the template's source.",
                true,
                |s| s.source_reads,
            ),
            (
                "squib_template_source_bytes_total",
                "Bytes read from the template's source.",
                true,
                |s| s.source_bytes,
            ),
            (
                "squib_template_cache_hits_total",
                "Block lookups served from the shared cache.",
                true,
                |s| s.hits,
            ),
            (
                "squib_template_cache_misses_total",
                "Block lookups that read the source.",
                true,
                |s| s.misses,
            ),
            (
                "squib_template_cached_bytes",
                "Bytes held in the shared cache.",
                false,
                |s| s.cached_bytes,
            ),
        ];
        for (name, help, is_counter, get) in per_template {
            let mut family = if is_counter {
                page.counter(name, help)
            } else {
                page.gauge(name, help)
            };
            for t in templates.values() {
                family.sample(&[("template", &t.name)], get(&t.source.stats()));
            }
        }
        drop(templates);
        let sessions: Vec<Arc<SessionEntry>> = lock(&self.sessions).values().cloned().collect();
        let live: Vec<(Arc<SessionEntry>, PagerStatsSnapshot)> = sessions
            .iter()
            .filter_map(|s| s.stats().map(|st| (s.clone(), st)))
            .collect();
        type SessionFigure = fn(&PagerStatsSnapshot) -> u64;
        let per_session: [(&str, &str, SessionFigure); 5] = [
            ("squib_session_faults_total", "Faults served.", |s| s.faults),
            (
                "squib_session_bytes_served_total",
                "Bytes installed.",
                |s| s.bytes_served,
            ),
            (
                "squib_session_pages_copied_total",
                "Pages installed from source bytes.",
                |s| s.pages_copied,
            ),
            (
                "squib_session_zero_pages_total",
                "Pages installed as zeros.",
                |s| s.zero_pages,
            ),
            (
                "squib_session_failed_closed_total",
                "Faults that failed closed (the VMM was killed).",
                |s| s.failed_closed,
            ),
        ];
        for (name, help, get) in per_session {
            let mut family = page.counter(name, help);
            for (s, st) in &live {
                family.sample(
                    &[("session", &s.id), ("template", &s.template.name)],
                    get(st),
                );
            }
        }
        let mut latency = page.histogram(
            "squib_session_fault_latency_seconds",
            "Time from reading a fault to installing its page.",
        );
        // Bucket i holds faults under 2^i µs; the last one is the overflow bucket.
        let bounds: Vec<f64> = (0..squib_host::LATENCY_BUCKETS - 1)
            .map(|i| (1u64 << i) as f64 / 1e6)
            .collect();
        for (s, st) in &live {
            latency.observe(&[("session", &s.id)], &bounds, &st.latency.buckets, None);
        }
        page.counter(
            "squib_pager_storage_read_bytes_total",
            "Bytes this pager process read from storage (page-cache hits not counted).",
        )
        .value(storage_read_bytes());
        let mut by_state = page.gauge("squib_sessions", "Sessions by state.");
        for state in ["waiting", "serving", "draining", "drained", "ended"] {
            let n = sessions
                .iter()
                .filter(|s| s.state_name().starts_with(state))
                .count();
            by_state.sample(&[("state", &state)], n);
        }
        page.into_string()
    }
}

/// An error and its causes on one line.
/// Bytes this process has caused to be read from storage (`read_bytes` of `/proc/self/io`):
/// page-cache hits are not counted, so with templates read through the kernel's page cache
/// this is how much of the snapshots really came off the disk.
fn storage_read_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("read_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Names and ids: 1–64 of letters, digits, `.`, `_`, `-`.
fn valid_name(name: &str, field: &str) -> Result<(), Response> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Response::error(
            400,
            "must be 1-64 letters, digits, '.', '_' or '-'",
            Some(field),
        ))
    }
}

/// The socket's directory must belong to the client (root's may be used by root): the
/// service never creates files in another user's directory.
fn owned_dir(socket: &Path, uid: u32) -> Result<(), Response> {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    let meta = std::fs::metadata(dir)
        .map_err(|e| Response::error(400, format!("{}: {e}", dir.display()), Some("socket")))?;
    if meta.uid() == uid {
        return Ok(());
    }
    Err(Response::error(
        403,
        format!(
            "{} belongs to uid {}, not to you (uid {uid})",
            dir.display(),
            meta.uid()
        ),
        Some("socket"),
    ))
}

/// The memory file must be readable by the client: root, its owner, or anyone when it is
/// world-readable.
fn readable_by(path: &Path, uid: u32) -> Result<(), Response> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Response::error(400, format!("{}: {e}", path.display()), Some("mem_file")))?;
    if !meta.is_file() {
        return Err(Response::error(
            400,
            format!("{} is not a regular file", path.display()),
            Some("mem_file"),
        ));
    }
    if uid == 0 || meta.uid() == uid || meta.mode() & 0o004 != 0 {
        return Ok(());
    }
    Err(Response::error(
        403,
        format!("{} is not readable by uid {uid}", path.display()),
        Some("mem_file"),
    ))
}
