//! The router's WebSocket link to the gateway: connect with a deadline, subprotocol
//! `mcp`, optional bearer token, W3C trace context headers of the `gateway.connect`
//! span, bounded buffers and message size.

use std::time::Duration;

use async_net::TcpStream;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use mcp_shared::error::RelayError;
use mcp_shared::framing::{ws_read_limit, WS_READ_BUFFER_BYTES, WS_WRITE_BATCH_BYTES};
use mcp_shared::meter::{Meter, Metered};
use mcp_shared::secret::Secret;

/// Sending half of the link.
pub type Sender = WebSocketSender<Metered<TcpStream>>;
/// Receiving half of the link.
pub type Receiver = WebSocketReceiver<Metered<TcpStream>>;

/// A connected link: its two halves, its TCP socket (to shut down a link the router
/// gives up on: the halves share the socket, so dropping one does not close it), and
/// the meter of its bytes (for `send_timeout` and keepalive, which look at progress).
pub struct Link {
    /// Sending half.
    pub sink: Sender,
    /// Receiving half.
    pub stream: Receiver,
    /// The socket under both.
    pub socket: TcpStream,
    /// Bytes moved so far each way.
    pub meter: std::rc::Rc<Meter>,
    /// The gateway session's id from the handshake's response (absent with a gateway
    /// that does not send it, or one too long to be an id), for `mcp.session.id`.
    pub session_id: Option<std::rc::Rc<str>>,
}

/// A session id longer than this (bytes) from the handshake is not recorded.
pub const MAX_SESSION_ID_BYTES: usize = 128;

/// WebSocket settings: small buffers, and no message larger than `max_message_bytes`
/// (one up to [`mcp_shared::framing::WS_OVERSIZE_FACTOR`] times that is read to be answered and dropped).
pub fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BATCH_BYTES)
        .max_message_size(Some(ws_read_limit(max_message_bytes)))
        .max_frame_size(Some(ws_read_limit(max_message_bytes)))
}

/// Connects to `url` and completes the WebSocket handshake within `timeout`.
pub async fn connect(
    url: &str,
    token: Option<&Secret>,
    max_message_bytes: usize,
    timeout: Duration,
    extra_headers: Vec<(String, String)>,
) -> Result<Link, RelayError> {
    let unreachable = |reason: String| RelayError::GatewayUnreachable {
        // Logged and put in span statuses: no query value (it may be a credential).
        url: mcp_shared::config::redact_url_query(url).into_owned(),
        reason,
    };
    let attempt = async {
        let mut req = url
            .into_client_request()
            .map_err(|e| unreachable(format!("bad URL: {e}")))?;
        let host = req.uri().host().unwrap_or_default().to_string();
        let port = req.uri().port_u16().unwrap_or(80);
        let headers = req.headers_mut();
        headers.insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mcp"));
        for (k, v) in extra_headers {
            if let (Ok(name), Ok(value)) = (
                async_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                headers.insert(name, value);
            }
        }
        if let Some(t) = token {
            let v = HeaderValue::from_str(&format!("Bearer {}", t.expose())).map_err(|_| {
                unreachable("token contains characters not allowed in a header".into())
            })?;
            headers.insert("Authorization", v);
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let stream = TcpStream::connect((host, port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        stream.set_nodelay(true).ok();
        let socket = stream.clone();
        let (stream, meter) = Metered::new(stream);
        let (ws, resp) = async_tungstenite::client_async_with_config(
            req,
            stream,
            Some(ws_config(max_message_bytes)),
        )
        .await
        .map_err(|e| unreachable(format!("WebSocket handshake failed: {e}")))?;
        let session_id = resp
            .headers()
            .get(mcp_shared::mcp::SESSION_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= MAX_SESSION_ID_BYTES)
            .map(std::rc::Rc::from);
        let (sink, stream) = ws.split();
        Ok(Link {
            sink,
            stream,
            socket,
            meter,
            session_id,
        })
    };
    let deadline = async {
        async_io::Timer::after(timeout).await;
        Err(unreachable(format!(
            "no WebSocket handshake within {} ms",
            timeout.as_millis()
        )))
    };
    futures_lite::future::or(attempt, deadline).await
}
