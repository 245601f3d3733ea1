//! A small closed-loop HTTP/1.1 load generator for `POST /call`, std only.
//!
//! Every connection is keep-alive and has exactly one request in flight: write the request, read the
//! full response (head, then `Content-Length` body bytes), record the latency, repeat. With
//! `--threads N` below the connection count, N threads each multiplex their share of the connections
//! on a `mio` poll, the way `pgbench -j N` spreads its clients over N threads; `bench/compare.sh` runs
//! both clients that way so neither side pays for a thread wake-up per response that the other does
//! not. Without it every connection gets its own thread and blocking socket.
//!
//! ```text
//! cargo bench --bench loadgen -- --addr 127.0.0.1:9000 --connections 16 --duration 10 \
//!     --function bench_get_item --params '[{rand}]' --rand 1:10000
//! ```
//!
//! The last line of the output is machine-readable (`RESULT key=value ...`) for `bench/compare.sh`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const HELP: &str = "\
loadgen: closed-loop keep-alive load for the gateway's POST /call

USAGE: cargo bench --bench loadgen -- [OPTIONS]

OPTIONS:
  --addr HOST:PORT      gateway address                       [default: 127.0.0.1:9000]
  --connections N       keep-alive connections, one request in flight each  [default: 16]
  --threads N           threads multiplexing the connections (as pgbench -j)
                                                               [default: one per connection]
  --duration SECS       measured time (decimal allowed)        [default: 10]
  --warmup SECS         unmeasured time before it              [default: 2]
  --path PATH           request target                         [default: /call]
  --body JSON           the whole request body (wins over the four options below)
  --platform NAME       /call platform                         [default: bench]
  --tenant ID           /call tenant_id                        [default: none -> {platform}_main]
  --function NAME       /call function                         [default: bench_get_item]
  --params JSON         /call params                           [default: [{rand}]]
  --rand LO:HI          every `{rand}` in the body becomes a uniform random integer in LO..=HI,
                        drawn per request                      [default: 1:10000]
  --seed N              random seed                            [default: 1]
  --quiet               print only the RESULT line
  -h, --help            this text

A response is an error unless its status is 200; a valid run has errors=0.
Latency is measured from the first byte written to the last body byte read.
The last output line is `RESULT conns=.. secs=.. requests=.. errors=.. rps=.. mean_us=.. p50_us=..
p90_us=.. p99_us=.. max_us=.. bytes_per_resp=..`.
";

struct Opts {
    addr: String,
    connections: usize,
    /// 0: one blocking thread per connection.
    threads: usize,
    duration: Duration,
    warmup: Duration,
    path: String,
    body: Option<String>,
    platform: String,
    tenant: Option<String>,
    function: String,
    params: String,
    rand: (u64, u64),
    seed: u64,
    quiet: bool,
}

fn parse_secs(name: &str, v: &str) -> Result<Duration, String> {
    let s: f64 = v.parse().map_err(|_| format!("{name}: '{v}' is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&s) {
        return Err(format!("{name}: {v} is out of range"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn parse_args() -> Result<Option<Opts>, String> {
    let mut o = Opts {
        addr: "127.0.0.1:9000".into(),
        connections: 16,
        threads: 0,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        path: "/call".into(),
        body: None,
        platform: "bench".into(),
        tenant: None,
        function: "bench_get_item".into(),
        params: "[{rand}]".into(),
        rand: (1, 10_000),
        seed: 1,
        quiet: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        // `cargo bench` appends `--bench` to the arguments of harness = false targets.
        if a == "--bench" {
            continue;
        }
        if a == "-h" || a == "--help" {
            print!("{HELP}");
            return Ok(None);
        }
        if a == "--quiet" {
            o.quiet = true;
            continue;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => args.next().ok_or_else(|| format!("{name} needs a value")),
            }
        };
        match name.as_str() {
            "--addr" => o.addr = value()?,
            "--connections" | "-c" => {
                let v = value()?;
                o.connections = v.parse().map_err(|_| format!("--connections: '{v}' is not a count"))?;
                if o.connections == 0 || o.connections > 4096 {
                    return Err("--connections must be 1..=4096".into());
                }
            }
            "--threads" | "-j" => {
                let v = value()?;
                o.threads = v.parse().map_err(|_| format!("--threads: '{v}' is not a count"))?;
            }
            "--duration" | "-d" => o.duration = parse_secs("--duration", &value()?)?,
            "--warmup" => o.warmup = parse_secs("--warmup", &value()?)?,
            "--path" => o.path = value()?,
            "--body" => o.body = Some(value()?),
            "--platform" => o.platform = value()?,
            "--tenant" => o.tenant = Some(value()?),
            "--function" => o.function = value()?,
            "--params" => o.params = value()?,
            "--rand" => {
                let v = value()?;
                let (lo, hi) = v.split_once(':').ok_or("--rand wants LO:HI")?;
                let lo: u64 = lo.parse().map_err(|_| "--rand: bad LO")?;
                let hi: u64 = hi.parse().map_err(|_| "--rand: bad HI")?;
                if lo > hi {
                    return Err("--rand: LO > HI".into());
                }
                o.rand = (lo, hi);
            }
            "--seed" => {
                let v = value()?;
                o.seed = v.parse().map_err(|_| format!("--seed: '{v}' is not a number"))?;
            }
            _ => return Err(format!("unknown option '{a}' (try --help)")),
        }
    }
    if o.duration.is_zero() {
        return Err("--duration must be > 0".into());
    }
    if o.threads >= o.connections {
        o.threads = 0;
    }
    Ok(Some(o))
}

/// JSON string literal (names here are plain identifiers, but escape anyway).
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn body_template(o: &Opts) -> String {
    if let Some(b) = &o.body {
        return b.clone();
    }
    let tenant = match &o.tenant {
        Some(t) => json_str(t),
        None => "null".into(),
    };
    format!(
        "{{\"platform\":{},\"tenant_id\":{},\"function\":{},\"params\":{}}}",
        json_str(&o.platform),
        tenant,
        json_str(&o.function),
        o.params
    )
}

/// xorshift64*: cheap, good enough to spread keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        let span = hi - lo + 1;
        if span == 0 { self.next() } else { lo + self.next() % span }
    }
}

/// A request, prebuilt when the body has no `{rand}`, otherwise rebuilt into a reused buffer.
struct Request {
    head_prefix: Vec<u8>,
    parts: Vec<String>,
    rand: (u64, u64),
    buf: Vec<u8>,
    body: Vec<u8>,
}

impl Request {
    fn new(path: &str, host: &str, template: &str, rand: (u64, u64)) -> Request {
        let head_prefix =
            format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: ")
                .into_bytes();
        let parts: Vec<String> = template.split("{rand}").map(str::to_string).collect();
        let mut r = Request { head_prefix, parts, rand, buf: Vec::with_capacity(512), body: Vec::new() };
        if r.parts.len() == 1 {
            r.fill(&mut Rng(1));
        }
        r
    }

    fn fill(&mut self, rng: &mut Rng) {
        self.body.clear();
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                let n = rng.range(self.rand.0, self.rand.1);
                self.body.extend_from_slice(n.to_string().as_bytes());
            }
            self.body.extend_from_slice(p.as_bytes());
        }
        self.buf.clear();
        self.buf.extend_from_slice(&self.head_prefix);
        self.buf.extend_from_slice(self.body.len().to_string().as_bytes());
        self.buf.extend_from_slice(b"\r\n\r\n");
        self.buf.extend_from_slice(&self.body);
    }

    fn bytes(&mut self, rng: &mut Rng) -> &[u8] {
        if self.parts.len() > 1 {
            self.fill(rng);
        }
        &self.buf
    }
}

/// Reads one response off a keep-alive connection. `buf` holds bytes already read past the previous
/// response (none, with one request in flight, but handled anyway).
struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

struct Response {
    status: u16,
    close: bool,
    len: usize,
    /// The start of the body, kept only for non-200 responses (error reports).
    snippet: Option<String>,
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

impl Reader {
    fn new() -> Reader {
        Reader { buf: vec![0; 64 * 1024], start: 0, end: 0 }
    }

    fn fill(&mut self, s: &mut impl Read) -> Result<(), String> {
        match self.read_some(s) {
            Ok(0) => Err("connection closed by server".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// One `read` into the free space (`WouldBlock` passes through for non-blocking sockets).
    fn read_some(&mut self, s: &mut impl Read) -> std::io::Result<usize> {
        self.reserve();
        let n = s.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    fn response(&mut self, s: &mut TcpStream) -> Result<Response, String> {
        loop {
            if let Some(r) = self.try_response()? {
                return Ok(r);
            }
            self.fill(s)?;
        }
    }

    /// Makes room for more bytes after `end`.
    fn reserve(&mut self) {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
        }
    }

    /// The next complete response in the buffer, if there is one.
    fn try_response(&mut self) -> Result<Option<Response>, String> {
        let Some(head_len) = find_head_end(&self.buf[self.start..self.end]) else { return Ok(None) };
        let head = &self.buf[self.start..self.start + head_len];
        let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8")?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line '{status_line}'"))?;
        let mut len = None;
        let mut close = status_line.starts_with("HTTP/1.0");
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = Some(v.parse::<usize>().map_err(|_| format!("bad Content-Length '{v}'"))?);
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                return Err(format!("Transfer-Encoding '{v}' is not supported by loadgen"));
            } else if k.eq_ignore_ascii_case("connection") {
                close = v.eq_ignore_ascii_case("close");
            }
        }
        let len = len.ok_or("response without Content-Length")?;
        let total = head_len + len;
        if self.end - self.start < total {
            if self.start + total > self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if total > self.buf.len() {
                    self.buf.resize(total.next_power_of_two(), 0);
                }
            }
            return Ok(None);
        }
        let snippet = (status != 200).then(|| {
            let body = &self.buf[self.start + head_len..self.start + total];
            String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned()
        });
        self.start += total;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(Response { status, close, len: total, snippet }))
    }
}

#[derive(Default)]
struct ThreadResult {
    latencies_ns: Vec<u64>,
    errors: u64,
    bytes: u64,
    first_error: Option<String>,
    reconnects: u64,
}

impl ThreadResult {
    /// Counts one response of a request sent at `t0` and read by `t1`; only requests that started
    /// and ended inside the measured window are measured.
    fn record(&mut self, resp: Response, t0: Instant, t1: Instant, window: (Instant, Instant)) {
        if t0 >= window.0 && t1 <= window.1 {
            self.latencies_ns.push((t1 - t0).as_nanos() as u64);
            self.bytes += resp.len as u64;
            if resp.status != 200 {
                self.errors += 1;
            }
        }
        if resp.status != 200 && self.first_error.is_none() {
            self.first_error = Some(format!("HTTP {}: {}", resp.status, resp.snippet.unwrap_or_default()));
        }
    }
}

fn connect(addr: &SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(addr, Duration::from_secs(5)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| format!("timeout: {e}"))?;
    Ok(s)
}

fn worker(
    addr: SocketAddr,
    mut req: Request,
    seed: u64,
    measure_from: Instant,
    measure_to: Instant,
    stop: Arc<AtomicBool>,
) -> ThreadResult {
    let mut r = ThreadResult { latencies_ns: Vec::with_capacity(1 << 16), ..Default::default() };
    let mut rng = Rng(seed | 1);
    let mut stream: Option<TcpStream> = None;
    let mut reader = Reader::new();
    while !stop.load(Ordering::Relaxed) {
        let s = match &mut stream {
            Some(s) => s,
            None => match connect(&addr) {
                Ok(s) => {
                    reader = Reader::new();
                    stream.insert(s)
                }
                Err(e) => {
                    r.errors += 1;
                    r.first_error.get_or_insert(e);
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        let t0 = Instant::now();
        let outcome = s.write_all(req.bytes(&mut rng)).map_err(|e| format!("write: {e}")).and_then(|()| {
            let resp = reader.response(s)?;
            Ok(resp)
        });
        let t1 = Instant::now();
        let in_window = t0 >= measure_from && t1 <= measure_to;
        match outcome {
            Ok(resp) => {
                let close = resp.close;
                r.record(resp, t0, t1, (measure_from, measure_to));
                if close {
                    stream = None;
                    r.reconnects += 1;
                }
            }
            Err(e) => {
                if in_window || t0 >= measure_from {
                    r.errors += 1;
                }
                r.first_error.get_or_insert(e);
                stream = None;
                r.reconnects += 1;
            }
        }
        if t1 >= measure_to {
            break;
        }
    }
    r
}

/// One connection of a multiplexing thread.
struct Slot {
    sock: mio::net::TcpStream,
    req: Request,
    rng: Rng,
    reader: Reader,
    /// Bytes of the current request already written; `None` once it is all out.
    written: Option<usize>,
    t0: Instant,
}

impl Slot {
    /// Connects, registers under `token` and sends the first request.
    fn open(
        addr: &SocketAddr,
        req: Request,
        rng: Rng,
        registry: &mio::Registry,
        token: mio::Token,
    ) -> Result<Slot, String> {
        let s = connect(addr)?;
        s.set_nonblocking(true).map_err(|e| format!("nonblocking: {e}"))?;
        let sock = mio::net::TcpStream::from_std(s);
        let mut sl = Slot { sock, req, rng, reader: Reader::new(), written: Some(0), t0: Instant::now() };
        registry
            .register(&mut sl.sock, token, mio::Interest::READABLE | mio::Interest::WRITABLE)
            .map_err(|e| format!("register: {e}"))?;
        sl.send_next()?;
        Ok(sl)
    }

    /// Writes what the socket takes of the current request.
    fn write(&mut self) -> Result<(), String> {
        while let Some(done) = self.written {
            let bytes = self.req.buf.get(done..).unwrap_or_default();
            if bytes.is_empty() {
                self.written = None;
                break;
            }
            match self.sock.write(bytes) {
                Ok(0) => return Err("write: connection closed".into()),
                Ok(n) => self.written = Some(done + n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        Ok(())
    }

    /// Starts the next request.
    fn send_next(&mut self) -> Result<(), String> {
        self.req.bytes(&mut self.rng);
        self.written = Some(0);
        self.t0 = Instant::now();
        self.write()
    }
}

/// `conns` connections on one thread, multiplexed with `mio` (edge-triggered: every socket is
/// drained to `WouldBlock`).
fn worker_mux(
    addr: SocketAddr,
    conns: Vec<(Request, u64)>,
    measure_from: Instant,
    measure_to: Instant,
    stop: Arc<AtomicBool>,
) -> ThreadResult {
    use mio::{Events, Poll, Token};
    let mut r = ThreadResult { latencies_ns: Vec::with_capacity(1 << 18), ..Default::default() };
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            r.errors += 1;
            r.first_error = Some(format!("poll: {e}"));
            return r;
        }
    };
    let mut slots: Vec<Option<Slot>> = Vec::with_capacity(conns.len());
    for (i, (req, seed)) in conns.into_iter().enumerate() {
        match Slot::open(&addr, req, Rng(seed | 1), poll.registry(), Token(i)) {
            Ok(sl) => slots.push(Some(sl)),
            Err(e) => {
                r.errors += 1;
                r.first_error.get_or_insert(e);
                slots.push(None);
            }
        }
    }
    let mut events = Events::with_capacity(1024);
    while !stop.load(Ordering::Relaxed) && Instant::now() < measure_to {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            r.first_error.get_or_insert(format!("poll: {e}"));
            break;
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(Some(sl)) = slots.get_mut(i) else { continue };
            let mut failed: Option<String> = None;
            if sl.written.is_some()
                && let Err(e) = sl.write()
            {
                failed = Some(e);
            }
            // Drain the socket, then answer every complete response in the buffer.
            loop {
                if failed.is_some() {
                    break;
                }
                match sl.reader.read_some(&mut sl.sock) {
                    Ok(0) => failed = Some("connection closed by server".into()),
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => failed = Some(format!("read: {e}")),
                }
            }
            while failed.is_none() {
                match sl.reader.try_response() {
                    Ok(None) => break,
                    Ok(Some(resp)) => {
                        let t1 = Instant::now();
                        let close = resp.close;
                        r.record(resp, sl.t0, t1, (measure_from, measure_to));
                        if close {
                            failed = Some("server closed the keep-alive connection".into());
                        } else if t1 < measure_to
                            && let Err(e) = sl.send_next()
                        {
                            failed = Some(e);
                        }
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                // Reconnect in place and go on; the failure counts once.
                if sl.t0 >= measure_from {
                    r.errors += 1;
                }
                r.first_error.get_or_insert(e);
                r.reconnects += 1;
                let _ = poll.registry().deregister(&mut sl.sock);
                let Some(old) = slots[i].take() else { continue };
                match Slot::open(&addr, old.req, old.rng, poll.registry(), Token(i)) {
                    Ok(sl) => slots[i] = Some(sl),
                    Err(e) => {
                        r.first_error.get_or_insert(e);
                    }
                }
            }
        }
    }
    r
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest-rank percentile.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = match o.addr.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(a) => a,
        None => {
            eprintln!("loadgen: cannot resolve --addr {}", o.addr);
            return ExitCode::from(2);
        }
    };
    let template = body_template(&o);
    // Fail fast (and show the body) if the very first request does not work.
    {
        let mut req = Request::new(&o.path, &o.addr, &template, o.rand);
        let mut rng = Rng(o.seed | 1);
        let probe = connect(&addr).and_then(|mut s| {
            s.write_all(req.bytes(&mut rng)).map_err(|e| format!("write: {e}"))?;
            let mut rd = Reader::new();
            let resp = rd.response(&mut s)?;
            Ok((resp.status, resp.snippet.unwrap_or_default()))
        });
        match probe {
            Ok((200, _)) => {}
            Ok((st, body)) => {
                eprintln!("loadgen: probe request got HTTP {st}: {body}\nbody template: {template}");
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("loadgen: probe request failed: {e}");
                return ExitCode::from(1);
            }
        }
    }
    if !o.quiet {
        println!(
            "loadgen: {} connections on {} threads, warmup {:.1}s, duration {:.1}s, {} {}",
            o.connections,
            if o.threads == 0 { o.connections } else { o.threads },
            o.warmup.as_secs_f64(),
            o.duration.as_secs_f64(),
            o.addr,
            o.path
        );
        println!("body: {template}");
    }
    let start = Instant::now();
    let measure_from = start + o.warmup;
    let measure_to = measure_from + o.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(o.connections);
    let seed_of = |i: usize| o.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64 * 7919 + 1);
    // Connection i goes to thread i % threads; without --threads every connection has its own thread.
    let spawned = if o.threads > 0 {
        (0..o.threads)
            .map(|t| {
                let conns: Vec<(Request, u64)> = (t..o.connections)
                    .step_by(o.threads)
                    .map(|i| (Request::new(&o.path, &o.addr, &template, o.rand), seed_of(i)))
                    .collect();
                let flag = Arc::clone(&stop);
                thread::Builder::new()
                    .name(format!("mux-{t}"))
                    .spawn(move || worker_mux(addr, conns, measure_from, measure_to, flag))
            })
            .collect::<Vec<_>>()
    } else {
        (0..o.connections)
            .map(|i| {
                let req = Request::new(&o.path, &o.addr, &template, o.rand);
                let flag = Arc::clone(&stop);
                let seed = seed_of(i);
                thread::Builder::new()
                    .name(format!("conn-{i}"))
                    .stack_size(256 * 1024)
                    .spawn(move || worker(addr, req, seed, measure_from, measure_to, flag))
            })
            .collect::<Vec<_>>()
    };
    for h in spawned {
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                eprintln!("loadgen: cannot spawn thread: {e}");
                stop.store(true, Ordering::Relaxed);
                return ExitCode::from(1);
            }
        }
    }
    // Threads stop on their own at measure_to; the flag is a backstop.
    let now = Instant::now();
    if measure_to > now {
        thread::sleep(measure_to - now);
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    let mut bytes = 0;
    let mut reconnects = 0;
    let mut first_error = None;
    for h in handles {
        let r = h.join().unwrap_or_default();
        all.extend_from_slice(&r.latencies_ns);
        errors += r.errors;
        bytes += r.bytes;
        reconnects += r.reconnects;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    all.sort_unstable();
    let n = all.len() as u64;
    let secs = o.duration.as_secs_f64();
    let rps = n as f64 / secs;
    let mean = all.iter().sum::<u64>().checked_div(n).unwrap_or(0);
    let (p50, p90, p99) = (pct(&all, 50.0), pct(&all, 90.0), pct(&all, 99.0));
    let max = all.last().copied().unwrap_or(0);
    let per_resp = bytes.checked_div(n).unwrap_or(0);
    if !o.quiet {
        println!("requests   {n} in {secs:.1}s, errors {errors}, reconnects {reconnects}");
        println!("throughput {rps:.0} req/s, {per_resp} bytes/response");
        println!(
            "latency    mean {:.0} us, p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us",
            us(mean),
            us(p50),
            us(p90),
            us(p99),
            us(max)
        );
        if let Some(e) = &first_error {
            println!("first error: {e}");
        }
    }
    println!(
        "RESULT conns={} secs={secs:.1} requests={n} errors={errors} rps={rps:.1} mean_us={:.1} p50_us={:.1} \
         p90_us={:.1} p99_us={:.1} max_us={:.1} bytes_per_resp={per_resp}",
        o.connections,
        us(mean),
        us(p50),
        us(p90),
        us(p99),
        us(max)
    );
    if errors > 0 || n == 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
}
