//! `herald serve`: the HTTP API of `docs/http-api.md` and the web dashboard, for one bus.
//!
//! ```no_run
//! use herald::Bus;
//! use herald_http::serve::{ServeConfig, Server};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = Bus::builder().service("herald-serve").broker("sqlite://.herald/herald.db").build().await?;
//! let server = Server::new(bus.clone(), ServeConfig::new("127.0.0.1:7878".parse()?)).await?;
//! // A token was generated (none was configured): the login link carries it in its fragment.
//! println!("dashboard: {}", server.login_url());
//! server.serve(CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

mod api;
mod assets;
mod auth;
mod catalog;
mod guard;
mod history;
mod stream;

pub use api::sagas;
pub use guard::CONTENT_SECURITY_POLICY;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use herald::health::Health;
use herald::Bus;
use herald_outbox::health::RelayHealth;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use catalog::Catalog;
use history::History;
use stream::EventView;

/// What `herald serve` serves and how.
#[derive(Clone)]
pub struct ServeConfig {
    /// Where to listen. Anything but loopback requires `token`.
    pub listen: SocketAddr,
    /// The bearer token every `/api/*` route and `/metrics` require. When `None`, the server
    /// makes a random one ([`Server::token`], printed in [`Server::login_url`]).
    pub token: Option<String>,
    /// Host names the server answers to besides IP literals and `localhost` (its public name,
    /// or a reverse proxy's): requests naming any other host are refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// The event catalog JSON (`herald docs --format json`): served on `/api/catalog`, its
    /// schemas validate published bodies.
    pub catalog: Option<serde_json::Value>,
    /// The outbox to report on `/api/outbox` and in `/health/ready`.
    pub outbox: Option<RelayHealth>,
    /// More routes merged into the app (e.g. `/metrics`); the token protects `/metrics` too.
    /// It must not set a fallback (the server has its own JSON 404).
    pub extra: Router,
}

impl ServeConfig {
    /// Listen on `listen`, no token, no catalog, no outbox, no extra routes.
    pub fn new(listen: SocketAddr) -> Self {
        ServeConfig {
            listen,
            token: None,
            allowed_hosts: Vec::new(),
            catalog: None,
            outbox: None,
            extra: Router::new(),
        }
    }
}

/// What every handler sees.
#[derive(Clone)]
pub(crate) struct AppState {
    bus: Bus,
    catalog: Arc<Catalog>,
    outbox: Option<RelayHealth>,
    events: broadcast::Sender<Arc<EventView>>,
    history: Arc<History>,
    /// The live stream's own queue, hidden from listings and routing checks.
    stream_queue: String,
    /// Fires when the server stops, ending open SSE streams (graceful shutdown waits for them).
    stop: CancellationToken,
    /// The token and the session cookie derived from it.
    credentials: Arc<auth::Credentials>,
}

/// The server: bound, with the live stream subscribed, not yet serving.
pub struct Server {
    listener: TcpListener,
    app: Router,
    local_addr: SocketAddr,
    state: AppState,
    token: String,
    token_generated: bool,
}

impl Server {
    /// Check the configuration, subscribe the live stream on `bus` (and start it), bind the
    /// listener. Refuses a non-loopback address without a configured token (on loopback a
    /// random one is made); an address in use is [`Error::Bind`] and leaves the bus as it was.
    pub async fn new(bus: Bus, config: ServeConfig) -> Result<Server> {
        let configured = config.token.filter(|t| !t.is_empty());
        if configured.is_none() && !config.listen.ip().is_loopback() {
            return Err(Error::NonLoopbackWithoutToken(config.listen));
        }
        let token_generated = configured.is_none();
        let token = configured.unwrap_or_else(auth::generate_token);
        let catalog = Arc::new(Catalog::new(config.catalog, &bus.config().exchange)?);
        // Bind before subscribing, so a port in use leaves the bus untouched.
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let credentials = Arc::new(auth::Credentials::new(&token, local_addr.port()));
        let history = Arc::new(History::default());
        let (stream_queue, events) = stream::subscribe(&bus, history.clone())?;
        bus.start().await?;
        let state = AppState {
            bus: bus.clone(),
            catalog,
            outbox: config.outbox.clone(),
            events,
            history,
            stream_queue,
            stop: CancellationToken::new(),
            credentials: credentials.clone(),
        };
        let mut health = Health::new().with(Arc::new(bus.clone()));
        if let Some(outbox) = config.outbox {
            health = health.with(Arc::new(outbox));
        }
        let guard = Arc::new(guard::Guard {
            hosts: guard::Hosts::new(&config.allowed_hosts),
            credentials,
        });
        let app = Router::new()
            .merge(api::router())
            .route("/api/stream", get(stream::sse))
            .route("/api/session", post(auth::login).delete(auth::logout))
            .layer(DefaultBodyLimit::max(bus.config().max_message_bytes))
            .with_state(state.clone())
            .merge(crate::health::router(health))
            .merge(assets::router())
            .merge(config.extra)
            .layer(axum::middleware::from_fn_with_state(guard, guard::check));
        Ok(Server {
            listener,
            app,
            local_addr,
            state,
            token,
            token_generated,
        })
    }

    /// The token `/api/*` and `/metrics` require: the configured one, or the one generated.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The dashboard's URL, `http://ADDR/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.local_addr)
    }

    /// The URL to print for a person: with a generated token, the dashboard's URL with the
    /// token in its fragment (`#token=...`, as Jupyter prints a login link). A fragment never
    /// reaches a server or a proxy's log; the page trades it for the session cookie and removes
    /// it from the address bar. A configured token is not printed.
    pub fn login_url(&self) -> String {
        match self.token_generated {
            true => format!("{}#token={}", self.url(), self.token),
            false => self.url(),
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The app, to serve elsewhere or call in tests.
    pub fn router(&self) -> Router {
        self.app.clone()
    }

    /// Serve until `cancel` fires, sampling rates and depths meanwhile. Open SSE streams end
    /// when the server stops. The bus is left running: shut it down after.
    pub async fn serve(self, cancel: CancellationToken) -> Result<()> {
        let sampler_stop = cancel.child_token();
        let state = self.state;
        let sampler = {
            let stop = sampler_stop.clone();
            let transport = state.bus.transport().clone();
            let (history, skip) = (state.history.clone(), state.stream_queue.clone());
            tokio::spawn(async move { history.run(transport, skip, stop).await })
        };
        tracing::info!(addr = %self.local_addr, "herald serve listening");
        let result = axum::serve(self.listener, self.app)
            .with_graceful_shutdown({
                let stop = state.stop.clone();
                async move {
                    cancel.cancelled().await;
                    stop.cancel();
                }
            })
            .await
            .map_err(Error::Serve);
        sampler_stop.cancel();
        let _ = sampler.await;
        result
    }
}
