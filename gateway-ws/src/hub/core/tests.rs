//! The hub's rules (docs/protocol.md) driven by hand: sessions attached, client frames
//! in, signals routed through a real engine `Stage` on a fixed clock, frames read back
//! out of the core as a socket would take them. No thread, no socket, no real second.

use std::sync::Arc;
use std::time::Duration;

use engine::channels::{ChannelSet, Message};
use engine::config::EngineConfig;
use engine::model::{Category, CategoryMask, Signal, Tier, UnixNanos};
use engine::pipeline::{IngestItem, Origin, PipelineStats, SignalItem, Stage};
use engine::policy::TierPolicy;
use engine::ticks::TickBook;
use serde_json::{Value, json};

use super::*;
use crate::auth::{Accounts, DevAuth};
use crate::hub::quota::utc_day;
use crate::ws::client_frame;

/// 2026-11-23T02:13:20Z: a little after midnight UTC, far from the next one.
const T0: UnixNanos = UnixNanos(1_795_400_000_000_000_000);
const SECRET: &[u8] = b"the hub core tests' own secret, 32+ bytes";

/// What a client reads off its socket.
#[derive(Debug, PartialEq)]
enum Frame {
    Text(Value),
    Close(u16),
    Pong(Vec<u8>),
}

impl Frame {
    fn json(&self) -> &Value {
        match self {
            Self::Text(v) => v,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Server frames (unmasked, unfragmented) in `bytes`.
fn parse_frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let opcode = bytes[0] & 0x0f;
        let (len, head) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        let payload = &bytes[head..head + len];
        out.push(match opcode {
            1 => Frame::Text(serde_json::from_slice(payload).unwrap()),
            8 => Frame::Close(u16::from_be_bytes([payload[0], payload[1]])),
            10 => Frame::Pong(payload.to_vec()),
            other => panic!("unexpected opcode {other}"),
        });
        bytes = &bytes[head + len..];
    }
    out
}

struct Harness {
    core: Core,
    stage: Stage,
    channels: Arc<ChannelSet>,
    stats: Arc<GatewayStats>,
    auth: Arc<DevAuth>,
    clock: Clock,
    next_id: u128,
}

struct Setup {
    policy: TierPolicy,
    engine: EngineConfig,
    hub: HubConfig,
    conn: ConnConfig,
    history: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            policy: TierPolicy::default(),
            engine: EngineConfig { ring_capacity: 64, ..EngineConfig::default() },
            hub: HubConfig::default(),
            conn: ConnConfig::default(),
            history: false,
        }
    }
}

fn harness() -> Harness {
    Setup::default().build()
}

impl Setup {
    fn build(self) -> Harness {
        let policy = Arc::new(self.policy);
        let (ticks, writer) = TickBook::new(self.engine.max_symbols);
        let channels = Arc::new(ChannelSet::new(&policy, self.engine.ring_capacity));
        let stage = Stage::new(
            &self.engine,
            Arc::clone(&policy),
            writer,
            Arc::clone(&channels),
            Arc::default(),
            Arc::new(PipelineStats::default()),
        );
        let accounts = Accounts::from_toml(crate::config::fixtures::ACCOUNTS).unwrap();
        let auth = Arc::new(DevAuth::new(SECRET, accounts));
        let stats = Arc::new(GatewayStats::default());
        let src = Sources {
            channels: Arc::clone(&channels),
            ticks,
            policy,
            history: self.history,
            auth: Arc::clone(&auth) as Arc<dyn Authenticator>,
            stats: Arc::clone(&stats),
            quotas: Arc::new(QuotaBook::default()),
            hub: self.hub,
            conn: self.conn,
        };
        let clock = Clock { mono: std::time::Instant::now(), unix: T0 };
        Harness { core: Core::new(0, src, clock), stage, channels, stats, auth, clock, next_id: 1 }
    }
}

fn session(user: &str, tier: Tier) -> Session {
    Session {
        user_id: user.into(),
        tier,
        categories: CategoryMask::ALL,
        real_time: true,
        max_signals_per_day: None,
        expires_at: T0.0 / 1_000_000_000 + 3_600,
    }
}

impl Harness {
    fn advance(&mut self, d: Duration) {
        self.clock = self.clock.plus(d);
        self.stage.release_due(self.clock.unix);
        self.stage.finish_batch();
        self.core.on_timer(self.clock);
        self.core.fan_out(self.clock);
    }

    /// Attaches `s` and reads its WELCOME.
    fn connect(&mut self, s: Session) -> ConnId {
        let i = self.core.attach(s, None, self.clock);
        let welcome = self.read(i);
        assert_eq!(welcome.len(), 1, "{welcome:?}");
        assert_eq!(welcome[0].json()["data"]["event"], "welcome");
        i
    }

    fn send(&mut self, i: ConnId, text: &str) {
        let frame = client_frame(true, 1, text.as_bytes(), Some([1, 2, 3, 4]));
        assert_eq!(self.core.received(i, &frame, self.clock), Received::More);
    }

    /// SUBSCRIBE and the first frame that answers it.
    fn subscribe(&mut self, i: ConnId, channel: &str) -> Value {
        self.send(i, &format!(r#"{{"type":"SUBSCRIBE","channel":"{channel}"}}"#));
        self.read(i).remove(0).json().clone()
    }

    /// Routes a signal of `category` at `confidence` (hundredths) through the engine's
    /// stage now, and lets the core fan it out.
    fn route(&mut self, confidence: u16, category: Category) -> u128 {
        let n = self.next_id;
        self.next_id += 1;
        let (symbol, exchange) = engine::testkit::market_of(category);
        let s = engine::testkit::signal_at(n, confidence, symbol, exchange, category, self.clock.unix);
        self.route_signal(s);
        n
    }

    fn route_signal(&mut self, s: Signal) {
        let item = SignalItem {
            origin: Origin::Local,
            signal: s,
            ingest_ts: self.clock.unix,
            sent_ts: None,
            verdict: None,
        };
        self.stage.handle(IngestItem::Signal(Box::new(item)), self.clock.unix);
        self.stage.finish_batch();
        self.core.fan_out(self.clock);
    }

    fn tick(&mut self, symbol: &str, exchange: &str, last: &str) {
        let tick =
            engine::model::Tick { ts: self.clock.unix, ..engine::testkit::tick(symbol, exchange, last) };
        self.stage.handle(IngestItem::Tick(tick), self.clock.unix);
        self.stage.finish_batch();
    }

    /// Everything connection `i` has to write, as its client reads it (written in
    /// 7-byte pieces to exercise partial writes).
    fn read(&mut self, i: ConnId) -> Vec<Frame> {
        let mut bytes = Vec::new();
        loop {
            let mut slices = [IoSlice::new(&[]); IOVECS];
            let n = self.core.fill(i, &mut slices);
            if n == 0 {
                break;
            }
            let chunk: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).take(7).collect();
            let len = chunk.len();
            bytes.extend(chunk);
            self.core.written(i, len, self.clock.unix);
        }
        self.core.flushed(i, || self.clock.mono);
        parse_frames(&bytes)
    }

    /// The (seq, signal id) of every SIGNAL_UPDATE connection `i` has to write; any
    /// other frame fails the test.
    fn signals(&mut self, i: ConnId) -> Vec<(u64, u128)> {
        self.read(i)
            .iter()
            .map(|f| {
                let v = f.json();
                assert_eq!(v["type"], "SIGNAL_UPDATE", "{v}");
                let id = uuid::Uuid::parse_str(v["data"]["id"].as_str().unwrap()).unwrap();
                (v["seq"].as_u64().unwrap(), id.as_u128())
            })
            .collect()
    }

    fn ids(&mut self, i: ConnId) -> Vec<u128> {
        self.signals(i).into_iter().map(|(_, id)| id).collect()
    }
}

fn epoch_of(channels: &ChannelSet, tier: Tier) -> String {
    channels.live(tier).epoch().to_string()
}

// ----- tiers -----

#[test]
fn a_channel_above_the_users_tier_is_refused_and_its_own_and_lower_ones_are_not() {
    let mut h = harness();
    let c = h.connect(session("u-basic", Tier::Basic));
    for (channel, ok) in [
        ("signals_free", true),
        ("signals_basic", true),
        ("signals_premium", false),
        ("signals_enterprise", false),
    ] {
        let r = h.subscribe(c, channel);
        if ok {
            assert_eq!((r["type"].as_str(), r["channel"].as_str()), (Some("SUBSCRIBED"), Some(channel)));
        } else {
            assert_eq!(
                (r["type"].as_str(), r["code"].as_str(), r["channel"].as_str()),
                (Some("ERROR"), Some("forbidden"), Some(channel)),
                "{r}"
            );
        }
    }
    // 9,000 reaches every tier; 8,600 basic and up.
    let both = h.route(9_000, Category::Equity);
    let basic_only = h.route(8_600, Category::Equity);
    let got = h.read(c);
    let mut seen: Vec<(String, u128)> = got
        .iter()
        .map(|f| {
            let v = f.json();
            let id = uuid::Uuid::parse_str(v["data"]["id"].as_str().unwrap()).unwrap();
            (v["channel"].as_str().unwrap().to_owned(), id.as_u128())
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [("signals_basic".into(), both), ("signals_basic".into(), basic_only), ("signals_free".into(), both)],
        "the free channel is the free tier's delayed view for nobody here: a real-time basic user reads it live"
    );
}

// ----- categories -----

#[test]
fn only_the_users_categories_arrive_and_seq_stays_the_channels() {
    let mut h = harness();
    let mut s = session("u-crypto", Tier::Premium);
    s.categories = [Category::Crypto].into_iter().collect();
    let c = h.connect(s);
    let all = h.connect(session("u-all", Tier::Premium));
    h.subscribe(c, "signals_premium");
    h.subscribe(all, "signals_premium");
    let a = h.route(8_000, Category::Equity);
    let b = h.route(8_000, Category::Crypto);
    let d = h.route(8_000, Category::Forex);
    let e = h.route(8_000, Category::Crypto);
    assert_eq!(h.signals(c), [(2, b), (4, e)], "increasing, not contiguous");
    assert_eq!(h.ids(all), [a, b, d, e]);
}

#[test]
fn closes_and_unsubscribes_in_any_order_leave_every_other_subscriber_its_messages_once() {
    let mut h = harness();
    let conns: Vec<ConnId> = (0..6).map(|k| h.connect(session(&format!("u{k}"), Tier::Premium))).collect();
    for &c in &conns {
        h.subscribe(c, "signals_premium");
    }
    let first = h.route(8_000, Category::Equity);
    for &c in &conns {
        assert_eq!(h.ids(c), [first], "conn {c}");
    }
    // The first, a middle one and the last leave different ways; the ones moved into
    // their places must still be found when they leave in turn.
    h.core.remove(conns[0]);
    h.send(conns[3], r#"{"type":"UNSUBSCRIBE","channel":"signals_premium"}"#);
    h.core.remove(conns[5]);
    assert_eq!(h.read(conns[3])[0].json()["type"], "UNSUBSCRIBED");
    let second = h.route(8_000, Category::Equity);
    for &c in &[conns[1], conns[2], conns[4]] {
        assert_eq!(h.ids(c), [second], "once (conn {c})");
    }
    assert!(h.ids(conns[3]).is_empty(), "nothing after UNSUBSCRIBE");
    h.core.remove(conns[4]);
    h.core.remove(conns[1]);
    h.subscribe(conns[3], "signals_premium");
    let late = h.connect(session("late", Tier::Premium));
    h.subscribe(late, "signals_premium");
    let third = h.route(8_000, Category::Equity);
    for c in [conns[2], conns[3], late] {
        assert_eq!(h.ids(c), [third], "once (conn {c})");
    }
    h.core.remove(conns[2]);
    h.core.remove(late);
    let fourth = h.route(8_000, Category::Equity);
    assert_eq!(h.ids(conns[3]), [fourth]);
}

// ----- quota -----

#[test]
fn the_daily_quota_counts_per_user_across_connections_and_resets_at_midnight_utc() {
    // Connections that stay up past midnight without a word: no heartbeat or expiry
    // closes in this test.
    let hub = HubConfig { heartbeat_timeout: Duration::from_secs(3 * 86_400), ..HubConfig::default() };
    let mut h = Setup { hub, ..Setup::default() }.build();
    let capped = || {
        let mut s = session("u-capped", Tier::Premium);
        s.max_signals_per_day = Some(2);
        s.expires_at += 3 * 86_400;
        s
    };
    let s = capped();
    let phone = h.connect(s.clone());
    let desk = h.connect(s);
    for c in [phone, desk] {
        h.subscribe(c, "signals_premium");
    }
    let user = h.subscribe(phone, "user_u-capped");
    assert_eq!(user["type"], "SUBSCRIBED");
    let first = h.route(8_000, Category::Equity);
    let second = h.route(8_000, Category::Equity);
    h.route(8_000, Category::Equity);
    assert_eq!(h.ids(desk), [first, second], "one message to two connections counts once");
    let phone_frames = h.read(phone);
    let kinds: Vec<&str> = phone_frames.iter().map(|f| f.json()["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["SIGNAL_UPDATE", "SIGNAL_UPDATE", "NOTIFICATION"]);
    assert_eq!(phone_frames[2].json()["data"]["event"], "quota_exhausted");
    // Spent: a new SUBSCRIBE says so and subscribes nothing.
    let other = h.connect(capped());
    let r = h.subscribe(other, "signals_premium");
    assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("ERROR"), Some("quota_exhausted")), "{r}");
    h.route(8_000, Category::Equity);
    assert!(h.read(desk).is_empty() && h.read(phone).is_empty() && h.read(other).is_empty());

    // Midnight UTC: a new day, a new quota (without a reconnect).
    let midnight = (utc_day(h.clock.unix.0) as i64 + 1) * 86_400 * 1_000_000_000;
    h.advance(Duration::from_nanos((midnight - h.clock.unix.0 - 1) as u64));
    h.route(8_000, Category::Equity);
    // The day's signals expired on the way: their closes arrive (charged to no quota).
    let mut frames = h.read(desk);
    frames.extend(h.read(phone));
    assert!(
        frames.iter().all(|f| f.json()["data"]["status"] == "expired"),
        "one nanosecond before midnight is still yesterday: {frames:?}"
    );
    h.advance(Duration::from_nanos(1));
    let next_day = h.route(8_000, Category::Equity);
    assert_eq!(h.ids(desk), [next_day]);
    assert_eq!(h.ids(phone), [next_day]);
    let r = h.subscribe(other, "signals_premium");
    assert_eq!(r["type"], "SUBSCRIBED", "{r}");
}

#[test]
fn a_close_is_charged_to_no_quota_and_follows_its_signals_channel_and_category() {
    let mut h = harness();
    let mut capped = session("u-capped", Tier::Premium);
    capped.max_signals_per_day = Some(1);
    let capped = h.connect(capped);
    let mut crypto_only = session("u-crypto", Tier::Enterprise);
    crypto_only.categories = CategoryMask::NONE.with(Category::Crypto);
    let crypto_only = h.connect(crypto_only);
    let basic = h.connect(session("u-basic", Tier::Basic));
    for (c, ch) in
        [(capped, "signals_premium"), (crypto_only, "signals_enterprise"), (basic, "signals_basic")]
    {
        assert_eq!(h.subscribe(c, ch)["type"], "SUBSCRIBED");
    }
    h.tick("RELIANCE", "NSE", "2456.75");
    let first = h.route(8_000, Category::Equity); // premium and up; a buy with target 2520
    let second = h.route(8_000, Category::Equity);
    assert_eq!(h.ids(capped), [first], "the quota of 1 is spent on the first");

    h.tick("RELIANCE", "NSE", "2525");
    h.core.fan_out(h.clock);
    let closes = h.read(capped);
    let got: Vec<(String, String)> = closes
        .iter()
        .map(|f| {
            (f.json()["data"]["id"].as_str().unwrap().to_owned(), f.json()["data"]["status"].to_string())
        })
        .collect();
    let want = |n: u128| (uuid::Uuid::from_u128(n).to_string(), "\"target_hit\"".to_owned());
    assert_eq!(got, [want(first), want(second)], "closes reach a spent quota: they are not charged");
    assert!(h.read(crypto_only).is_empty(), "equity closes stay out of a crypto-only mask");
    assert!(h.read(basic).is_empty(), "signals_basic never carried them");
}

#[test]
fn a_resume_replay_is_charged_for_every_message_never_charged_before() {
    let mut h = harness();
    let mut s = session("u-replayer", Tier::Premium);
    s.max_signals_per_day = Some(3);
    let c = h.connect(s);
    let before: Vec<u128> = (0..5).map(|_| h.route(8_000, Category::Equity)).collect();
    h.subscribe(c, "signals_premium");
    let live = h.route(8_000, Category::Equity);
    assert_eq!(h.signals(c), [(6, live)]);
    // Replaying the ring from the start: the quota had 2 left, and seq 6 was paid for.
    let epoch = epoch_of(&h.channels, Tier::Premium);
    h.send(c, &format!(r#"{{"type":"SUBSCRIBE","channel":"signals_premium","since":0,"epoch":"{epoch}"}}"#));
    let frames = h.read(c);
    assert_eq!(frames[0].json()["type"], "SUBSCRIBED");
    let replayed: Vec<u64> = frames[1..].iter().map(|f| f.json()["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        replayed,
        [1, 2, 6],
        "the quota's 3 a day: seq 1 and 2 charged, 6 charged before, 3..=5 refused"
    );
    assert_eq!(frames.len(), 4, "{frames:?}");
    let _ = before;
}

#[test]
fn the_tiers_own_limit_applies_when_the_token_names_none() {
    let mut h = harness();
    let c = h.connect(session("u-basic", Tier::Basic));
    h.subscribe(c, "signals_basic");
    for _ in 0..201 {
        h.route(9_500, Category::Equity);
    }
    assert_eq!(h.signals(c).len(), 200, "basic: 200 a day in the default tier table");
}

// ----- delayed views -----

#[test]
fn free_users_and_users_without_real_time_read_the_delayed_view() {
    let mut h = harness();
    let free = h.connect(session("u-free", Tier::Free));
    let mut late = session("u-late", Tier::Premium);
    late.real_time = false;
    let late = h.connect(late);
    let live = h.connect(session("u-live", Tier::Premium));
    h.subscribe(free, "signals_free");
    h.subscribe(late, "signals_premium");
    h.subscribe(live, "signals_premium");
    let id = h.route(9_500, Category::Equity);
    assert_eq!(h.ids(live), [id], "real time");
    h.advance(Duration::from_secs(29));
    assert!(h.read(free).is_empty() && h.read(late).is_empty(), "not before 30 s");
    h.advance(Duration::from_secs(1));
    assert_eq!(h.ids(free), [id]);
    assert_eq!(h.ids(late), [id]);
}

// ----- resume -----

#[test]
fn resume_verdicts_inside_the_ring_before_it_and_with_a_foreign_epoch() {
    let mut h = harness();
    let ids: Vec<u128> = (0..100).map(|_| h.route(8_000, Category::Equity)).collect();
    let epoch = epoch_of(&h.channels, Tier::Premium);
    let c = h.connect(session("u-resume", Tier::Premium));

    // Inside the ring (64 kept): exactly the gap.
    h.send(c, &format!(r#"{{"type":"SUBSCRIBE","channel":"signals_premium","since":90,"epoch":"{epoch}"}}"#));
    let frames = h.read(c);
    let sub = frames[0].json();
    assert_eq!((sub["recovered"].as_bool(), sub["seq"].as_u64()), (Some(true), Some(100)), "{sub}");
    let replayed: Vec<u64> = frames[1..].iter().map(|f| f.json()["seq"].as_u64().unwrap()).collect();
    assert_eq!(replayed, (91..=100).collect::<Vec<_>>());
    assert_eq!(frames.len() - 1, ids[90..].len());

    // Before the ring, and no history on this node: recovered false, live from now.
    h.send(c, &format!(r#"{{"type":"SUBSCRIBE","channel":"signals_premium","since":10,"epoch":"{epoch}"}}"#));
    let frames = h.read(c);
    assert_eq!(frames.len(), 1, "nothing replayed: {frames:?}");
    assert_eq!(frames[0].json()["recovered"], false);

    // Another epoch (another node, a restart): recovered false.
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"signals_premium","since":95,"epoch":"00000000000000ff"}"#);
    assert_eq!(h.read(c)[0].json()["recovered"], false);
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"signals_premium","since":95,"epoch":"not-ours"}"#);
    assert_eq!(h.read(c)[0].json()["recovered"], false);

    // A second SUBSCRIBE replaced the first: each new signal arrives once.
    let next = h.route(8_000, Category::Equity);
    assert_eq!(h.signals(c), [(101, next)]);
}

#[test]
fn a_resume_from_before_the_ring_waits_for_the_history_read_back_and_then_goes_on_in_order() {
    let mut h = Setup { history: true, ..Setup::default() }.build();
    let ids: Vec<u128> = (0..100).map(|_| h.route(8_000, Category::Equity)).collect();
    let epoch = epoch_of(&h.channels, Tier::Premium);
    let c = h.connect(session("u-resume", Tier::Premium));
    h.send(c, &format!(r#"{{"type":"SUBSCRIBE","channel":"signals_premium","since":10,"epoch":"{epoch}"}}"#));
    assert!(h.read(c).is_empty(), "nothing is answered before the read-back");
    let req = h.core.poll_request().expect("a history read");
    let lost = h.channels.live(Tier::Premium).lost_through();
    assert_eq!((req.since, req.to), (10, lost));
    // A signal routed while the read runs is not lost nor sent early; it also pushes
    // seq `lost + 1` out of the ring, so the first read-back no longer meets the ring:
    // the core reads again, further.
    let during = h.route(8_000, Category::Equity);
    // What the topic holds (here: rebuilt from the routed ids).
    let topic = |h: &Harness, to: u64| -> Vec<Message> {
        (11..=to).map(|seq| message(h, seq, ids[seq as usize - 1])).collect()
    };
    h.core.history_done(req.done(Ok(topic(&h, lost))), h.clock);
    assert!(h.read(c).is_empty(), "still waiting");
    let again = h.core.poll_request().expect("a second, longer read");
    assert_eq!((again.since, again.to, again.round), (10, lost + 1, 2));
    h.core.history_done(again.done(Ok(topic(&h, lost + 1))), h.clock);
    let frames = h.read(c);
    assert_eq!(frames[0].json()["recovered"], true, "{:?}", frames[0]);
    let seqs: Vec<u64> = frames[1..].iter().map(|f| f.json()["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (11..=101).collect::<Vec<_>>(), "read-back, ring, then live, gap-free");
    let last = frames.last().unwrap().json();
    assert_eq!(uuid::Uuid::parse_str(last["data"]["id"].as_str().unwrap()).unwrap().as_u128(), during);
}

#[test]
fn a_snapshot_the_ring_cannot_fill_takes_its_older_part_from_the_history() {
    let mut h = Setup { history: true, ..Setup::default() }.build();
    // 100 signals through a 64-message ring: seqs 1..=36 are only in the history.
    let ids: Vec<u128> = (0..100).map(|_| h.route(8_000, Category::Equity)).collect();
    let lost = h.channels.live(Tier::Premium).lost_through();
    assert!(lost > 0);
    let c = h.connect(session("u-snap", Tier::Premium));
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"signals_premium","snapshot":80}"#);
    assert!(h.read(c).is_empty(), "nothing before the older part is in");
    let req = h.core.poll_request().expect("a history read");
    assert_eq!(req.to, lost);
    let older: Vec<Message> =
        (req.since + 1..=req.to).map(|seq| message(&h, seq, ids[seq as usize - 1])).collect();
    h.core.history_done(req.done(Ok(older)), h.clock);
    let frames = h.read(c);
    assert_eq!(frames[0].json()["type"], "SUBSCRIBED");
    let seqs: Vec<u64> = frames[1..].iter().map(|f| f.json()["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (21..=100).collect::<Vec<_>>(), "the last 80, older part first, in order");
    assert!(frames[1..].iter().all(|f| f.json()["snapshot"] == true));
    // A snapshot the ring can fill reads nothing.
    let d = h.connect(session("u-snap2", Tier::Premium));
    h.send(d, r#"{"type":"SUBSCRIBE","channel":"signals_premium","snapshot":5}"#);
    assert_eq!(h.read(d).len(), 6);
    assert!(h.core.poll_request().is_none());
}

#[test]
fn one_connection_has_at_most_four_read_backs_under_way_and_the_next_resume_is_not_recovered() {
    let mut h = Setup { history: true, ..Setup::default() }.build();
    for _ in 0..100 {
        h.route(8_000, Category::Equity);
    }
    let epoch = epoch_of(&h.channels, Tier::Premium);
    let resume = format!(r#"{{"type":"SUBSCRIBE","channel":"signals_premium","since":1,"epoch":"{epoch}"}}"#);
    let c = h.connect(session("u-greedy", Tier::Premium));
    // Each SUBSCRIBE replaces the one before, whose read goes on all the same.
    let mut reads = Vec::new();
    for _ in 0..MAX_READS_PER_CONN {
        h.send(c, &resume);
        reads.push(h.core.poll_request().expect("a read-back"));
    }
    assert!(h.read(c).is_empty(), "all waiting for their read-back");
    h.send(c, &resume);
    assert!(h.core.poll_request().is_none(), "no fifth read for one connection");
    let frames = h.read(c);
    assert_eq!(frames[0].json()["type"], "SUBSCRIBED");
    assert_eq!(frames[0].json()["recovered"], false, "answered as by a busy reader");
    // Others are not held back by it.
    let d = h.connect(session("u-other", Tier::Premium));
    h.send(d, &resume);
    assert!(h.core.poll_request().is_some(), "another connection's read starts");
    // One answered (for a subscription long replaced): room for one more.
    h.core.history_done(reads.remove(0).done(Ok(Vec::new())), h.clock);
    h.send(c, &resume);
    assert!(h.core.poll_request().is_some(), "a read starts again");
}

#[test]
fn a_history_answer_for_a_connection_that_left_goes_nowhere() {
    let mut h = Setup { history: true, ..Setup::default() }.build();
    for _ in 0..100 {
        h.route(8_000, Category::Equity);
    }
    let epoch = epoch_of(&h.channels, Tier::Premium);
    let c = h.connect(session("u-gone", Tier::Premium));
    h.send(c, &format!(r#"{{"type":"SUBSCRIBE","channel":"signals_premium","since":1,"epoch":"{epoch}"}}"#));
    let req = h.core.poll_request().unwrap();
    h.core.remove(c);
    // The slot is reused by someone else before the answer comes.
    let other = h.connect(session("u-next", Tier::Premium));
    assert_eq!(other, c, "the slot was reused");
    h.core.history_done(req.done(Ok(Vec::new())), h.clock);
    assert!(h.read(other).is_empty(), "the newcomer gets nothing meant for the one who left");
}

/// The SIGNAL_UPDATE the engine would have framed for `seq` of signals_premium.
fn message(h: &Harness, seq: u64, id: u128) -> Message {
    let meta = engine::channels::MessageMeta {
        seq,
        category: Category::Equity,
        ingest_ts: h.clock.unix,
        routed_ts: h.clock.unix,
        sent_ts: None,
        outcome: false,
    };
    let json = format!(
        r#"{{"type":"SIGNAL_UPDATE","channel":"signals_premium","seq":{seq},"data":{{"id":"{}"}}}}"#,
        uuid::Uuid::from_u128(id)
    );
    Message::new(&meta, json.as_bytes(), &mut Vec::new())
}

// ----- slow consumers -----

#[test]
fn a_client_that_reads_nothing_is_closed_4008_past_the_outbound_bound_and_others_go_on() {
    let conn = ConnConfig { outbound_limit: 8 * 1024, ..ConnConfig::default() };
    let mut h = Setup { conn, ..Setup::default() }.build();
    let slow = h.connect(session("u-slow", Tier::Premium));
    let fast = h.connect(session("u-fast", Tier::Premium));
    h.subscribe(slow, "signals_premium");
    h.subscribe(fast, "signals_premium");
    let mut sent = Vec::new();
    for _ in 0..40 {
        sent.push(h.route(8_000, Category::Equity));
        assert_eq!(h.ids(fast), [*sent.last().unwrap()]);
    }
    let frames = h.read(slow);
    assert_eq!(frames.last(), Some(&Frame::Close(4008)), "{frames:?}");
    assert!(frames.len() < 20, "the queue was dropped, not written: {} frames", frames.len());
    assert_eq!(h.stats.slow_consumer_closes(), 1);
    // After our close, nothing more is queued for it; it lingers, then is dropped.
    h.route(8_000, Category::Equity);
    assert!(h.read(slow).is_empty());
    h.advance(LINGER + Duration::from_secs(1));
    assert_eq!(h.core.poll_gone(), Some(slow));
}

#[test]
fn a_resume_gap_larger_than_the_outbound_bound_is_replayed_whole_and_live_frames_stay_bounded() {
    let conn = ConnConfig { outbound_limit: 8 * 1024, ..ConnConfig::default() };
    let mut h = Setup { conn, ..Setup::default() }.build();
    // 40 signals (about 28 KiB of frames) while the client was away: over the bound.
    for _ in 0..40 {
        h.route(8_000, Category::Equity);
    }
    let epoch = epoch_of(&h.channels, Tier::Premium);
    let c = h.connect(session("u-back", Tier::Premium));
    h.send(c, &format!(r#"{{"type":"SUBSCRIBE","channel":"signals_premium","since":0,"epoch":"{epoch}"}}"#));
    let frames = h.read(c);
    assert_eq!(frames[0].json()["recovered"], true, "{frames:?}");
    let replayed: Vec<u64> = frames[1..].iter().map(|f| f.json()["seq"].as_u64().unwrap()).collect();
    assert_eq!(replayed, (1..=40).collect::<Vec<_>>(), "the whole gap, in order");
    assert_eq!(h.stats.slow_consumer_closes(), 0);

    // A replay queued and not yet read leaves the bound to live frames behind it.
    h.send(c, &format!(r#"{{"type":"SUBSCRIBE","channel":"signals_premium","since":0,"epoch":"{epoch}"}}"#));
    for _ in 0..5 {
        h.route(8_000, Category::Equity);
    }
    let frames = h.read(c);
    let seqs: Vec<u64> = frames[1..].iter().map(|f| f.json()["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=45).collect::<Vec<_>>(), "replay, then live, nothing closed");

    // Live frames alone still close a client that reads nothing past the bound.
    for _ in 0..40 {
        h.route(8_000, Category::Equity);
    }
    assert_eq!(h.read(c).last(), Some(&Frame::Close(4008)));
    assert_eq!(h.stats.slow_consumer_closes(), 1);
}

#[test]
fn a_socket_that_takes_nothing_for_the_write_timeout_is_dropped() {
    let mut h = harness();
    let c = h.connect(session("u-stuck", Tier::Premium));
    h.subscribe(c, "signals_premium");
    h.route(8_000, Category::Equity);
    h.core.blocked(c, h.clock);
    h.advance(Duration::from_secs(10));
    assert_eq!(h.core.poll_gone(), None, "10 s is the limit, not past it");
    h.advance(Duration::from_secs(1));
    assert_eq!(h.core.poll_gone(), Some(c));
}

// ----- prices -----

#[test]
fn prices_start_with_a_snapshot_and_conflate_to_the_latest_per_symbol() {
    let mut h = harness();
    h.tick("RELIANCE", "NSE", "2450.00");
    h.tick("TCS", "NSE", "3900.00");
    // Enterprise: one update per price turn (the tier's cap, 50 a second).
    let c = h.connect(session("u-prices", Tier::Enterprise));
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"prices_general"}"#);
    let frames = h.read(c);
    assert_eq!(frames[0].json()["type"], "SUBSCRIBED");
    assert_eq!(frames[0].json()["max_frequency"], 50);
    let snapshot: Vec<(String, String)> = frames[1..]
        .iter()
        .map(|f| {
            let d = &f.json()["data"];
            (d["symbol"].as_str().unwrap().into(), d["last"].as_str().unwrap().into())
        })
        .collect();
    assert_eq!(snapshot, [("RELIANCE".into(), "2450.0000".into()), ("TCS".into(), "3900.0000".into())]);
    // Three RELIANCE ticks in one price interval: one update, the last.
    for last in ["2451.00", "2452.00", "2453.00"] {
        h.tick("RELIANCE", "NSE", last);
    }
    assert!(h.read(c).is_empty(), "prices go out on the price timer");
    h.advance(HubConfig::default().price_interval);
    let updates: Vec<String> =
        h.read(c).iter().map(|f| f.json()["data"]["last"].as_str().unwrap().to_owned()).collect();
    assert_eq!(updates, ["2453.0000"]);
    // A client that cannot take them now gets the latest when it can, not a backlog.
    for last in ["2454.00", "2455.00"] {
        h.tick("RELIANCE", "NSE", last);
        h.advance(HubConfig::default().price_interval);
    }
    let updates: Vec<String> =
        h.read(c).iter().map(|f| f.json()["data"]["last"].as_str().unwrap().to_owned()).collect();
    assert_eq!(updates, ["2455.0000"]);
}

#[test]
fn a_price_snapshot_of_a_big_book_stays_inside_the_outbound_bound_and_arrives_whole() {
    // 3,000 symbols of ~150-byte frames: 450 KB of snapshot against a 64 KiB bound.
    let limit = 64 * 1024;
    let conn = ConnConfig { outbound_limit: limit, ..ConnConfig::default() };
    let mut h = Setup { conn, ..Setup::default() }.build();
    for k in 0..3_000 {
        h.tick(&format!("SYM{k}"), "NSE", "100.00");
    }
    let c = h.connect(session("u-book", Tier::Free));
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"prices_general"}"#);
    let mut slices = [IoSlice::new(&[]); IOVECS];
    let n = h.core.fill(c, &mut slices);
    assert!(n > 0);
    let queued = h.core.queued_bytes(c);
    assert!(queued <= limit, "pending prices count against the bound once queued: {queued} B queued");
    let frames = h.read(c);
    assert_eq!(frames[0].json()["type"], "SUBSCRIBED");
    let mut symbols: Vec<String> =
        frames[1..].iter().map(|f| f.json()["data"]["symbol"].as_str().unwrap().to_owned()).collect();
    assert_eq!(symbols.len(), 3_000, "not closed as a slow consumer: every symbol once");
    symbols.sort();
    symbols.dedup();
    assert_eq!(symbols.len(), 3_000);
}

// ----- tokens, heartbeats -----

#[test]
fn a_token_is_warned_a_minute_before_it_expires_and_closed_4001_at_expiry() {
    let mut h = harness();
    let mut s = session("u-short", Tier::Premium);
    s.expires_at = T0.0 / 1_000_000_000 + 120;
    let c = h.connect(s);
    h.advance(Duration::from_secs(30));
    h.send(c, r#"{"type":"PING"}"#);
    h.advance(Duration::from_secs(29));
    h.send(c, r#"{"type":"PING"}"#);
    assert_eq!(h.read(c).len(), 2, "two PONGs, no warning yet");
    h.advance(Duration::from_secs(1));
    let warn = h.read(c);
    assert_eq!(warn[0].json()["data"]["event"], "token_expiring", "{warn:?}");
    h.send(c, r#"{"type":"PING"}"#);
    h.advance(Duration::from_secs(59));
    assert_eq!(h.read(c).len(), 1, "a PONG; no second warning, not closed yet");
    h.advance(Duration::from_secs(1));
    assert_eq!(h.read(c), [Frame::Close(4001)]);
}

#[test]
fn refresh_extends_the_session_and_a_token_for_someone_else_is_refused() {
    let mut h = harness();
    let s = session("u-premium-1", Tier::Premium);
    let c = h.connect(s);
    let other = h.auth.mint("u-free-1", Duration::from_secs(600)).unwrap();
    h.send(c, &format!(r#"{{"type":"REFRESH","token":"{other}"}}"#));
    let r = h.read(c);
    assert_eq!(
        (r[0].json()["type"].as_str(), r[0].json()["code"].as_str()),
        (Some("ERROR"), Some("forbidden"))
    );
    let mine = h.auth.mint("u-premium-1", Duration::from_secs(7_200)).unwrap();
    h.send(c, &format!(r#"{{"type":"REFRESH","token":"{mine}"}}"#));
    let r = h.read(c);
    assert_eq!(r[0].json()["data"]["event"], "token_refreshed", "{r:?}");
}

#[test]
fn a_silent_client_is_closed_4004_after_the_heartbeat_timeout() {
    let mut h = harness();
    let c = h.connect(session("u-quiet", Tier::Premium));
    h.advance(Duration::from_secs(60));
    assert!(h.read(c).is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(h.read(c), [Frame::Close(4004)]);
}

// ----- rights changes -----

#[test]
fn a_downgrade_closes_the_channels_above_the_new_tier_and_a_suspension_closes_4003() {
    let mut h = harness();
    let c = h.connect(session("u-down", Tier::Premium));
    h.subscribe(c, "signals_premium");
    h.subscribe(c, "signals_basic");
    let e = crate::auth::Entitlements {
        id: "u-down".into(),
        email: String::new(),
        tier: Tier::Basic,
        categories: Category::ALL.to_vec(),
        real_time: true,
        max_signals_per_day: None,
        status: "active".into(),
        changed_at: None,
    };
    h.core.rights(&e, h.clock);
    let frames = h.read(c);
    let got: Vec<(String, String)> = frames
        .iter()
        .map(|f| {
            let v = f.json();
            let what =
                v["data"]["event"].as_str().or(v["code"].as_str()).or(v["reason"].as_str()).unwrap_or("");
            (v["type"].as_str().unwrap().to_owned(), what.to_owned())
        })
        .collect();
    assert_eq!(
        got,
        [
            ("SYSTEM_MESSAGE".to_owned(), "entitlements_changed".to_owned()),
            ("ERROR".into(), "forbidden".into()),
            ("UNSUBSCRIBED".into(), "entitlement".into()),
        ]
    );
    let id = h.route(9_000, Category::Equity);
    assert_eq!(h.ids(c), [id], "signals_basic goes on, once");

    let suspended = crate::auth::Entitlements { status: "suspended".into(), ..e };
    h.core.rights(&suspended, h.clock);
    let frames = h.read(c);
    assert_eq!(frames[0].json()["data"]["event"], "suspended");
    assert_eq!(frames[1], Frame::Close(4003));
}

// ----- client input -----

#[test]
fn bad_messages_get_errors_and_too_many_close_1008() {
    let mut h = harness();
    let c = h.connect(session("u-noisy", Tier::Premium));
    for k in 0..MAX_ERRORS {
        h.send(c, r#"{"type":"NOPE"}"#);
        let r = h.read(c);
        assert_eq!(r[0].json()["type"], "ERROR", "error {k}");
    }
    h.send(c, "not json");
    let r = h.read(c);
    assert_eq!(r.last(), Some(&Frame::Close(1008)), "{r:?}");
}

#[test]
fn over_the_message_rate_a_client_is_told_rate_limited() {
    let mut h = harness();
    let c = h.connect(session("u-fast", Tier::Premium));
    let burst = 2 * ConnConfig::default().max_messages_per_sec as usize;
    for _ in 0..burst {
        h.send(c, r#"{"type":"PING"}"#);
    }
    assert_eq!(h.read(c).len(), burst);
    h.send(c, r#"{"type":"PING"}"#);
    assert_eq!(h.read(c)[0].json()["code"], "rate_limited");
    h.advance(Duration::from_secs(1));
    h.send(c, r#"{"type":"PING"}"#);
    assert_eq!(h.read(c)[0].json()["type"], "PONG", "the bucket refills");
}

#[test]
fn a_ping_frame_is_answered_with_its_payload_and_a_close_is_echoed() {
    let mut h = harness();
    let c = h.connect(session("u-ws", Tier::Free));
    let ping = client_frame(true, 9, b"hi", Some([9, 9, 9, 9]));
    h.core.received(c, &ping, h.clock);
    assert_eq!(h.read(c), [Frame::Pong(b"hi".to_vec())]);
    let close = client_frame(true, 8, &1000u16.to_be_bytes(), Some([1, 1, 1, 1]));
    h.core.received(c, &close, h.clock);
    assert_eq!(h.read(c), [Frame::Close(1000)]);
}

#[test]
fn ping_frames_share_the_message_rate_and_a_flood_of_them_is_closed_1008() {
    let mut h = harness();
    let c = h.connect(session("u-pinger", Tier::Free));
    let burst = 2 * ConnConfig::default().max_messages_per_sec as usize;
    let ping = client_frame(true, 9, b"", Some([9, 9, 9, 9]));
    for _ in 0..burst {
        h.core.received(c, &ping, h.clock);
    }
    assert_eq!(h.read(c).len(), burst, "a PONG each within the rate");
    h.core.received(c, &ping, h.clock);
    let r = h.read(c);
    assert_eq!(r.len(), 1, "no PONG past the rate: {r:?}");
    assert_eq!(r[0].json()["code"], "rate_limited");
    let flood: Vec<u8> = (0..1_000).flat_map(|_| ping.clone()).collect();
    h.core.received(c, &flood, h.clock);
    let r = h.read(c);
    assert_eq!(r.last(), Some(&Frame::Close(1008)), "too many errors: {r:?}");
    assert_eq!(r.len(), MAX_ERRORS + 1, "ERRORs up to the limit, then the close, and nothing for the rest");
}

// ----- drain -----

#[test]
fn drain_tells_everyone_then_closes_1001_and_refuses_newcomers_the_same_way() {
    let mut h = harness();
    let c = h.connect(session("u-drain", Tier::Premium));
    h.subscribe(c, "signals_premium");
    h.core.drain();
    let frames = h.read(c);
    assert_eq!(frames[0].json()["data"]["event"], "drain");
    assert_eq!(frames[1], Frame::Close(1001));
    h.route(8_000, Category::Equity);
    assert!(h.read(c).is_empty(), "nothing after the close");
    let late = h.core.attach(session("u-late", Tier::Premium), None, h.clock);
    assert_eq!(h.read(late), [Frame::Close(1001)]);
}

#[test]
fn every_subscription_counts_against_the_limit() {
    let hub = HubConfig { max_subscriptions: 2, ..HubConfig::default() };
    let mut h = Setup { hub, ..Setup::default() }.build();
    let c = h.connect(session("u-many", Tier::Enterprise));
    assert_eq!(h.subscribe(c, "signals_free")["type"], "SUBSCRIBED");
    assert_eq!(h.subscribe(c, "prices_general")["type"], "SUBSCRIBED");
    let r = h.subscribe(c, "signals_basic");
    assert_eq!(r["code"], "too_many_subscriptions", "{r}");
    assert_eq!(h.subscribe(c, "signals_free")["type"], "SUBSCRIBED", "re-subscribing is not another one");
}

// ----- filters ([7/10]) -----

impl Harness {
    /// Routes signal `n` on `symbol` (NSE unless given as `EXCH:SYM`) of `kind` at
    /// `confidence` (hundredths).
    fn route_on(&mut self, n: u128, symbol: &str, kind: engine::model::SignalType, confidence: u16) {
        let (exchange, symbol) = symbol.split_once(':').unwrap_or(("NSE", symbol));
        let mut s =
            engine::testkit::signal_at(n, confidence, symbol, exchange, Category::Equity, self.clock.unix);
        s.signal_type = kind;
        if kind == engine::model::SignalType::Sell {
            std::mem::swap(&mut s.target_price, &mut s.stop_loss);
        }
        self.route_signal(s);
    }
}

#[test]
fn a_filter_picks_symbols_types_and_confidence_and_is_echoed_normalized() {
    use engine::model::SignalType::{Buy, Sell};
    let mut h = harness();
    let c = h.connect(session("u-watch", Tier::Premium));
    h.send(
        c,
        r#"{"type":"SUBSCRIBE","channel":"signals_premium",
            "filter":{"symbols":["TCS","NSE:INFY","TCS"],"signal_types":["buy"],"min_confidence":85}}"#,
    );
    let ok = h.read(c).remove(0).json().clone();
    assert_eq!(ok["type"], "SUBSCRIBED", "{ok}");
    assert_eq!(
        ok["filter"],
        serde_json::json!({"symbols": ["NSE:INFY", "TCS"], "signal_types": ["buy"], "min_confidence": 85.0})
    );
    h.route_on(1, "TCS", Buy, 9_000); // in
    h.route_on(2, "RELIANCE", Buy, 9_000); // another symbol
    h.route_on(3, "TCS", Sell, 9_000); // another type
    h.route_on(4, "TCS", Buy, 8_000); // below 85
    h.route_on(5, "BSE:INFY", Buy, 9_000); // INFY, but on BSE
    h.route_on(6, "INFY", Buy, 9_000); // in
    assert_eq!(h.signals(c), [(1, 1), (6, 6)], "seq stays the channel's: increasing, not contiguous");
}

#[test]
fn a_resume_replays_only_what_the_filter_lets_through() {
    use engine::model::SignalType::Buy;
    let mut h = harness();
    for (n, sym) in [(1, "TCS"), (2, "RELIANCE"), (3, "TCS")] {
        h.route_on(n, sym, Buy, 9_000);
    }
    let c = h.connect(session("u-watch", Tier::Premium));
    let epoch = epoch_of(&h.channels, Tier::Premium);
    h.send(
        c,
        &format!(
            r#"{{"type":"SUBSCRIBE","channel":"signals_premium","since":0,"epoch":"{epoch}","filter":{{"symbols":["TCS"]}}}}"#
        ),
    );
    let frames = h.read(c);
    assert_eq!(frames[0].json()["recovered"], true);
    let replayed: Vec<u64> = frames[1..].iter().map(|f| f.json()["seq"].as_u64().unwrap()).collect();
    assert_eq!(replayed, [1, 3]);
}

#[test]
fn a_new_filter_is_swapped_in_place_and_a_bad_one_changes_nothing() {
    use engine::model::SignalType::Buy;
    let mut h = harness();
    let c = h.connect(session("u-watch", Tier::Premium));
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"signals_premium","filter":{"symbols":["TCS"]}}"#);
    h.read(c);
    h.route_on(1, "TCS", Buy, 9_000);
    h.route_on(2, "INFY", Buy, 9_000);
    assert_eq!(h.signals(c), [(1, 1)]);
    // Steps: INFY added; nothing replayed, nothing repeated.
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"signals_premium","filter":{"add_symbols":["INFY"]}}"#);
    let ok = h.read(c).remove(0).json().clone();
    assert_eq!(ok["filter"]["symbols"], serde_json::json!(["INFY", "TCS"]), "{ok}");
    h.route_on(3, "INFY", Buy, 9_000);
    h.route_on(4, "TCS", Buy, 9_000);
    assert_eq!(h.signals(c), [(3, 3), (4, 4)]);
    // A bad filter: ERROR bad_request, the watchlist as it was.
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"signals_premium","filter":{"symbols":"TCS"}}"#);
    let err = h.read(c).remove(0).json().clone();
    assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("ERROR"), Some("bad_request")), "{err}");
    h.route_on(5, "INFY", Buy, 9_000);
    assert_eq!(h.signals(c), [(5, 5)]);
    // More symbols than the tier allows (premium: 200).
    let many: Vec<String> = (0..201).map(|k| format!("S{k}")).collect();
    h.send(
        c,
        &serde_json::json!({"type": "SUBSCRIBE", "channel": "signals_premium", "filter": {"symbols": many}})
            .to_string(),
    );
    let err = h.read(c).remove(0).json().clone();
    assert!(err["message"].as_str().unwrap().contains("at most 200"), "{err}");
}

#[test]
fn a_swap_answers_where_the_subscription_stands_and_loses_nothing_behind_it() {
    use engine::model::SignalType::Buy;
    let mut h = harness();
    let c = h.connect(session("u-watch", Tier::Premium));
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"signals_premium","filter":{"symbols":["TCS"]}}"#);
    h.read(c);
    // Routed, but not yet fanned out by this shard when the new filter comes.
    let mut s = engine::testkit::signal_at(1, 9_000, "INFY", "NSE", Category::Equity, h.clock.unix);
    s.signal_type = Buy;
    h.stage.handle(
        IngestItem::Signal(Box::new(SignalItem {
            origin: Origin::Local,
            signal: s,
            ingest_ts: h.clock.unix,
            sent_ts: None,
            verdict: None,
        })),
        h.clock.unix,
    );
    h.stage.finish_batch();
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"signals_premium","filter":{"symbols":["INFY"]}}"#);
    let ok = h.read(c).remove(0).json().clone();
    assert_eq!(ok["seq"], 0, "before the INFY signal the shard has not fanned out yet: {ok}");
    h.core.fan_out(h.clock);
    assert_eq!(h.signals(c), [(1, 1)], "it passes the new filter and arrives");
    // Emptying a watchlist by steps is refused (an empty list would mean everything).
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"signals_premium","filter":{"remove_symbols":["INFY"]}}"#);
    assert_eq!(h.read(c)[0].json()["code"], "bad_request");
}

#[test]
fn prices_pending_for_a_slow_client_are_dropped_with_its_subscription() {
    let mut h = harness();
    h.tick("GOLD", "MCX", "100");
    h.tick("SILVER", "MCX", "100");
    let c = h.connect(session("u-slow", Tier::Enterprise));
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"prices_general"}"#);
    // Not read yet: both latest prices are pending when it leaves the channel.
    h.send(c, r#"{"type":"UNSUBSCRIBE","channel":"prices_general"}"#);
    let frames = h.read(c);
    let kinds: Vec<&str> = frames.iter().map(|f| f.json()["type"].as_str().unwrap()).collect();
    let after = kinds.iter().skip_while(|k| **k != "UNSUBSCRIBED").skip(1).count();
    assert!(kinds.contains(&"UNSUBSCRIBED") && after == 0, "nothing after UNSUBSCRIBED: {kinds:?}");
    // A narrower watchlist: the dropped symbol's pending price goes too, and a rate
    // change alone sends no price again.
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"prices_general"}"#);
    h.read(c);
    h.tick("GOLD", "MCX", "101");
    h.tick("SILVER", "MCX", "101");
    h.advance(HubConfig::default().price_interval);
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"prices_general","filter":{"symbols":["GOLD"]}}"#);
    let got = prices_of(&h.read(c)[1..]);
    assert!(got.iter().all(|p| p.0 == "GOLD"), "{got:?}");
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"prices_general","max_frequency":1}"#);
    let frames = h.read(c);
    assert_eq!(frames[0].json()["max_frequency"], 1);
    // Never an older price at the lower rate (a rate nobody used gets a fresh frame).
    let got = prices_of(&frames[1..]);
    assert!(got.iter().all(|p| p.0 == "GOLD" && p.1 == "101.0000"), "{got:?}");
}

#[test]
fn a_lower_tier_takes_the_price_rate_down() {
    let mut h = harness();
    h.tick("GOLD", "MCX", "100");
    let c = h.connect(session("u-down", Tier::Enterprise));
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"prices_general"}"#);
    assert_eq!(h.read(c)[0].json()["max_frequency"], 50);
    let mut s = session("u-down", Tier::Free);
    s.expires_at = i64::MAX;
    h.core.change_rights(c, s, b"{}");
    let frames = h.read(c);
    let rate =
        frames.iter().find(|f| f.json()["type"] == "SUBSCRIBED").map(|f| f.json()["max_frequency"].clone());
    assert_eq!(rate, Some(json!(2)), "free: 2 a second");
}

#[test]
fn a_close_passes_its_signals_filter_and_a_filtered_out_message_costs_no_quota() {
    use engine::model::SignalType::Buy;
    let mut h = harness();
    let mut s = session("u-capped-watch", Tier::Premium);
    s.max_signals_per_day = Some(1);
    let c = h.connect(s);
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"signals_premium","filter":{"symbols":["RELIANCE"]}}"#);
    h.read(c);
    h.route_on(1, "TCS", Buy, 9_000); // filtered out: not charged
    h.tick("RELIANCE", "NSE", "2456.75");
    h.route_on(2, "RELIANCE", Buy, 9_000);
    assert_eq!(h.ids(c), [2], "the quota of 1 went to the one it wanted");
    h.tick("RELIANCE", "NSE", "2530");
    h.core.fan_out(h.clock);
    let closes = h.read(c);
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(closes[0].json()["data"]["status"], "target_hit");
}

/// The `last` of each PRICE_UPDATE read, with its symbol and `conflated`.
fn prices_read(h: &mut Harness, c: usize) -> Vec<(String, String, u64)> {
    prices_of(&h.read(c))
}

fn prices_of(frames: &[Frame]) -> Vec<(String, String, u64)> {
    frames
        .iter()
        .map(|f| {
            let d = &f.json()["data"];
            (
                d["symbol"].as_str().unwrap().to_owned(),
                d["last"].as_str().unwrap().to_owned(),
                d["conflated"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn p(symbol: &str, last: &str, conflated: u64) -> (String, String, u64) {
    (symbol.to_owned(), format!("{last}.0000"), conflated)
}

#[test]
fn a_watchlist_gets_the_latest_of_its_symbols_first_then_only_theirs() {
    let mut h = harness();
    for (symbol, exchange) in [("RELIANCE", "NSE"), ("TCS", "NSE"), ("INFY", "NSE"), ("INFY", "BSE")] {
        h.tick(symbol, exchange, "100");
    }
    let c = h.connect(session("u-watch", Tier::Premium));
    h.send(
        c,
        r#"{"type":"SUBSCRIBE","channel":"prices_general","filter":{"symbols":["TCS","NSE:INFY","HDFC"]}}"#,
    );
    let frames = h.read(c);
    let ok = frames[0].json();
    assert_eq!(ok["filter"]["symbols"], json!(["HDFC", "NSE:INFY", "TCS"]), "normalized: {ok}");
    let mut first = prices_of(&frames[1..]);
    first.sort();
    assert_eq!(first, [p("INFY", "100", 1), p("TCS", "100", 1)], "INFY on NSE only, nothing else");
    // Changes: only watched symbols, a watched one seen for the first time included.
    for (symbol, exchange) in [("RELIANCE", "NSE"), ("TCS", "NSE"), ("INFY", "BSE"), ("HDFC", "NSE")] {
        h.tick(symbol, exchange, "101");
    }
    h.advance(HubConfig::default().price_interval);
    let mut next = prices_read(&mut h, c);
    next.sort();
    assert_eq!(next, [p("HDFC", "101", 1), p("TCS", "101", 1)]);
    // Symbols added in a step: the new one's latest price comes at once.
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"prices_general","filter":{"add_symbols":["RELIANCE"]}}"#);
    let ok = h.read(c);
    assert_eq!(ok[0].json()["filter"]["symbols"], json!(["HDFC", "NSE:INFY", "RELIANCE", "TCS"]));
    let latest: Vec<&str> = ok[1..].iter().map(|f| f.json()["data"]["symbol"].as_str().unwrap()).collect();
    assert!(latest.contains(&"RELIANCE"), "{latest:?}");
    // Only symbols: any other part of a filter is refused, and nothing changes.
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"prices_general","filter":{"categories":["equity"]}}"#);
    let err = h.read(c).remove(0).json().clone();
    assert_eq!(err["code"], "bad_request", "{err}");
    h.tick("RELIANCE", "NSE", "102");
    h.advance(HubConfig::default().price_interval);
    assert_eq!(prices_read(&mut h, c), [p("RELIANCE", "102", 1)]);
}

#[test]
fn max_frequency_is_a_fixed_rate_never_above_the_tiers_and_says_what_it_merged() {
    let mut h = harness();
    h.tick("GOLD", "MCX", "100");
    // Free: capped at 2 a second whatever is asked; premium gets the nearest rate below.
    let free = h.connect(session("u-free", Tier::Free));
    h.send(free, r#"{"type":"SUBSCRIBE","channel":"prices_general","max_frequency":50}"#);
    assert_eq!(h.read(free)[0].json()["max_frequency"], 2);
    let c = h.connect(session("u-rate", Tier::Premium));
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"prices_general","max_frequency":7}"#);
    let frames = h.read(c);
    assert_eq!(frames[0].json()["max_frequency"], 5);
    let interval = HubConfig::default().price_interval;
    // Every tick of 10 price turns: at 5 a second, one update per 200 ms standing for
    // the ticks it merged.
    for n in 1..=10 {
        h.tick("GOLD", "MCX", &(100 + n).to_string());
        h.advance(interval);
    }
    let got = prices_read(&mut h, c);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1, "110.0000", "the latest");
    assert!(got[0].2 >= 9, "it stands for the ticks merged into it: {got:?}");
    // Lowered on the fly: the same subscription, one a second.
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"prices_general","max_frequency":1}"#);
    assert_eq!(h.read(c)[0].json()["max_frequency"], 1);
    for n in 11..=60 {
        h.tick("GOLD", "MCX", &(100 + n).to_string());
        h.advance(interval);
    }
    let got = prices_read(&mut h, c);
    assert!((1..=2).contains(&got.len()), "about one a second: {got:?}");
    // Bad rates are refused.
    for bad in ["0", "-1", "\"fast\""] {
        h.send(c, &format!(r#"{{"type":"SUBSCRIBE","channel":"prices_general","max_frequency":{bad}}}"#));
        assert_eq!(h.read(c)[0].json()["code"], "bad_request", "{bad}");
    }
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"signals_premium","max_frequency":1}"#);
    assert_eq!(h.read(c)[0].json()["code"], "bad_request");
}

#[test]
fn a_tier_without_every_symbol_must_name_a_watchlist() {
    let text =
        include_str!("../../../../fixtures/tiers.toml").replace("[free]\n", "[free]\nprices_all = false\n");
    let policy = TierPolicy::from_toml(&text).unwrap();
    let mut h = Setup { policy, ..Setup::default() }.build();
    h.tick("GOLD", "MCX", "100");
    let c = h.connect(session("u-free", Tier::Free));
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"prices_general"}"#);
    let err = h.read(c).remove(0).json().clone();
    assert_eq!(err["code"], "forbidden", "{err}");
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"prices_general","filter":{"symbols":["GOLD"]}}"#);
    assert_eq!(h.read(c)[0].json()["type"], "SUBSCRIBED");
    // Past the tier's watchlist size: refused.
    let many: Vec<String> = (0..21).map(|k| format!("\"S{k}\"")).collect();
    h.send(
        c,
        &format!(
            r#"{{"type":"SUBSCRIBE","channel":"prices_general","filter":{{"symbols":[{}]}}}}"#,
            many.join(",")
        ),
    );
    assert_eq!(h.read(c)[0].json()["code"], "bad_request");
}

#[test]
fn user_channels_take_no_filter() {
    let mut h = harness();
    let c = h.connect(session("u-watch", Tier::Premium));
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"user_u-watch","filter":{"symbols":["TCS"]}}"#);
    let err = h.read(c).remove(0).json().clone();
    assert_eq!(err["code"], "bad_request", "{err}");
}

#[test]
fn a_snapshot_sends_the_last_matching_messages_marked_then_live() {
    use engine::model::SignalType::Buy;
    let mut h = harness();
    for (n, sym) in [(1, "TCS"), (2, "INFY"), (3, "TCS"), (4, "TCS"), (5, "INFY")] {
        h.route_on(n, sym, Buy, 9_000);
    }
    let c = h.connect(session("u-watch", Tier::Premium));
    h.send(
        c,
        r#"{"type":"SUBSCRIBE","channel":"signals_premium","snapshot":2,"filter":{"symbols":["TCS"]}}"#,
    );
    let frames = h.read(c);
    assert_eq!(frames[0].json()["type"], "SUBSCRIBED");
    let snap: Vec<(u64, bool)> = frames[1..]
        .iter()
        .map(|f| (f.json()["seq"].as_u64().unwrap(), f.json()["snapshot"] == true))
        .collect();
    assert_eq!(snap, [(3, true), (4, true)], "the last two TCS, oldest first, marked");
    h.route_on(6, "TCS", Buy, 9_000);
    let live = h.read(c);
    assert_eq!(live[0].json()["seq"], 6);
    assert!(live[0].json().get("snapshot").is_none(), "live messages are not marked");
    // A snapshot larger than what is kept gives what there is.
    let d = h.connect(session("u-watch-2", Tier::Premium));
    h.send(d, r#"{"type":"SUBSCRIBE","channel":"signals_premium","snapshot":100}"#);
    assert_eq!(h.read(d).len(), 1 + 6);
}

#[test]
fn a_snapshot_with_since_or_over_the_limit_is_refused() {
    let mut h = harness();
    let c = h.connect(session("u-watch", Tier::Premium));
    let epoch = epoch_of(&h.channels, Tier::Premium);
    h.send(
        c,
        &format!(
            r#"{{"type":"SUBSCRIBE","channel":"signals_premium","snapshot":5,"since":0,"epoch":"{epoch}"}}"#
        ),
    );
    assert_eq!(h.read(c).remove(0).json()["code"], "bad_request");
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"signals_premium","snapshot":101}"#);
    let err = h.read(c).remove(0).json().clone();
    assert!(err["message"].as_str().unwrap().contains("at most 100"), "{err}");
}

#[test]
fn subscribers_sharing_filters_and_more_filters_than_the_fanout_remembers_each_get_their_own() {
    use engine::model::SignalType::Buy;
    let mut h = harness();
    // Six watchlists (more than the fan-out's memo of four), two subscribers on each,
    // interleaved so that equal filters are not neighbours.
    let symbols = ["TCS", "INFY", "RELIANCE", "HDFC", "ITC", "SBIN"];
    let mut conns = Vec::new();
    for round in 0..2 {
        for (k, sym) in symbols.iter().enumerate() {
            let c = h.connect(session(&format!("u-{round}-{k}"), Tier::Premium));
            h.send(
                c,
                &format!(
                    r#"{{"type":"SUBSCRIBE","channel":"signals_premium","filter":{{"symbols":["{sym}"]}}}}"#
                ),
            );
            h.read(c);
            conns.push((c, k));
        }
    }
    for (n, sym) in symbols.iter().enumerate() {
        h.route_on(n as u128 + 1, sym, Buy, 9_000);
    }
    h.route_on(7, "TCS", Buy, 9_000);
    for (c, k) in conns {
        let want: Vec<(u64, u128)> =
            if k == 0 { vec![(1, 1), (7, 7)] } else { vec![(k as u64 + 1, k as u128 + 1)] };
        assert_eq!(h.signals(c), want, "watchlist {}", symbols[k]);
    }
}

/// A premium subscriber of every price at 1 a second, GOLD already priced (its first
/// frame read).
fn prices_at_one_a_second() -> (Harness, ConnId) {
    let mut h = harness();
    h.tick("GOLD", "MCX", "100");
    let c = h.connect(session("u-rate", Tier::Premium));
    h.send(c, r#"{"type":"SUBSCRIBE","channel":"prices_general","max_frequency":1}"#);
    h.read(c);
    (h, c)
}

#[test]
fn at_one_rate_a_subscribers_symbols_fall_due_in_the_same_turn() {
    let (mut h, c) = prices_at_one_a_second();
    let interval = HubConfig::default().price_interval;
    h.advance(interval);
    // SILVER first ticks 300 ms after GOLD: its first frame goes out then.
    for _ in 0..15 {
        h.advance(interval);
    }
    h.tick("SILVER", "MCX", "50");
    h.advance(interval);
    assert_eq!(prices_read(&mut h, c).iter().map(|p| p.0.as_str()).collect::<Vec<_>>(), ["SILVER"]);
    // Then both tick at every turn for three seconds, the turns 5 ms before each
    // second (a turn up to half a turn early serves the next period): each turn that
    // sends one of them sends both (one write for the subscriber, not two), and still
    // only once a second (an early turn is not followed by a second send just after).
    h.advance(Duration::from_millis(15));
    let mut turns = Vec::new();
    for n in 1..=150 {
        h.tick("GOLD", "MCX", &(100 + n).to_string());
        h.tick("SILVER", "MCX", &(50 + n).to_string());
        h.advance(interval);
        let mut got: Vec<String> = prices_read(&mut h, c).into_iter().map(|p| p.0).collect();
        got.sort();
        if !got.is_empty() {
            turns.push(got);
        }
    }
    assert_eq!(turns.len(), 3, "one a second: {turns:?}");
    assert!(turns.iter().all(|t| t == &["GOLD", "SILVER"]), "{turns:?}");
}

#[test]
fn channels_named_in_the_upgrade_are_subscribed_after_welcome_under_the_same_rules() {
    use engine::channels::ChannelName;
    let mut h = harness();
    let i = h.core.attach(session("u-open", Tier::Basic), None, h.clock);
    h.core.subscribe_on_open(
        i,
        vec![ChannelName::Signals(Tier::Basic), ChannelName::Prices, ChannelName::Signals(Tier::Premium)],
    );
    let frames = h.read(i);
    let kinds: Vec<(String, String)> = frames
        .iter()
        .map(|f| {
            let v = f.json();
            (v["type"].as_str().unwrap_or("").to_owned(), v["channel"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    assert_eq!(frames[0].json()["data"]["event"], "welcome", "WELCOME first: {kinds:?}");
    assert_eq!(kinds[1], ("SUBSCRIBED".to_owned(), "signals_basic".to_owned()));
    assert_eq!(kinds[2], ("SUBSCRIBED".to_owned(), "prices_general".to_owned()));
    // Above the tier: refused as a SUBSCRIBE would be, the rest stands.
    assert_eq!(kinds[3], ("ERROR".to_owned(), "signals_premium".to_owned()));
    assert_eq!(frames[3].json()["code"], "forbidden");
    let id = h.route(9_500, Category::Equity);
    assert_eq!(h.ids(i), [id], "subscribed: the next signal arrives with no SUBSCRIBE sent");
}

#[test]
fn however_a_symbols_ticks_fall_two_of_its_updates_are_at_least_half_a_period_apart() {
    let (mut h, c) = prices_at_one_a_second();
    let interval = HubConfig::default().price_interval;
    // Turn n is 20 ms × n after the first (periods of 1 s begin at turns 50, 100, …).
    // Ticks come in bursts of 30 turns after quiet spells of 70, each burst starting one
    // turn before a period begins: the symbol is due then, and must not be sent again
    // at the next turn just because a new period began.
    let mut at = Vec::new();
    for n in 1..=600u64 {
        if n >= 99 && (n + 1) % 100 < 30 {
            h.tick("GOLD", "MCX", &(100 + n).to_string());
        }
        h.advance(interval);
        if !prices_read(&mut h, c).is_empty() {
            at.push(n);
        }
    }
    assert!(at.len() >= 5, "updates keep coming: {at:?}");
    let closest = at.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    assert!(closest >= 25, "half a second is 25 turns; closest {closest}: {at:?}");
}
