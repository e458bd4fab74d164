//! The stage: the one writer of ticks, seqs and channel logs.

use std::sync::Arc;

use super::commit::{self, Committer, Staged, StagedClose, StagedSignal};
use super::dedup::{ProducerSeqs, RecentIds};
use super::delay::DelayLine;
use super::{
    Archive, Archived, ArchivedClose, Done, DropReason, HandoverItem, IngestItem, Origin, Outcome,
    PipelineStats, Publish, Routed, RoutedItem, SignalItem, encode, enrich, filter, route,
};
use crate::channels::{ChannelName, ChannelSet, Message, MessageMeta};
use crate::config::{EngineConfig, MissingTick};
use crate::feed::{ProducerRegistry, ProducerSlot};
use crate::model::{Tick, Tier, UnixNanos};
use crate::outcome::handover::{Handover, PeerEvent, Rebalances};
use crate::outcome::{Close, Tracked, Tracker};
use crate::policy::TierPolicy;
use crate::ticks::{TickUpdate, TickWriter};

/// A signal waiting for the archive's commit: its data once, and the channels it takes.
type Held = (Vec<u8>, Vec<(Tier, MessageMeta)>);

/// A batch routed and not yet let out: its messages wait for the archive's commit, and
/// so do its acknowledgements (producer slot, seq) and [`Done`] callbacks.
#[derive(Debug, Default)]
struct Batch {
    held: Vec<Held>,
    per_tier: [u64; 4],
    acks: Vec<(u32, u64)>,
    done: Vec<Done>,
}

impl Batch {
    /// Appends `later` (routed after `self`). Acknowledgements are cumulative, so one
    /// per producer is kept, the later: while the store cannot commit, batches of
    /// signals that are all dropped (duplicates, below the bar) stage nothing, so the
    /// commit's bound never stops the stage, and their acknowledgements must not pile up.
    fn merge(&mut self, later: Batch) {
        self.held.extend(later.held);
        for (n, m) in self.per_tier.iter_mut().zip(later.per_tier) {
            *n += m;
        }
        for (slot, seq) in later.acks {
            match self.acks.iter_mut().find(|(s, _)| *s == slot) {
                Some(ack) => ack.1 = seq,
                None => self.acks.push((slot, seq)),
            }
        }
        self.done.extend(later.done);
    }

    fn is_empty(&self) -> bool {
        self.held.is_empty() && self.acks.is_empty() && self.done.is_empty()
    }
}

/// The most signals one commit takes. Batches routed while the store writes wait and
/// are written together in one transaction: under load a commit grows towards this
/// bound, which is what keeps the store ahead (most of a commit's cost is the index
/// pages it rewrites, shared by all of its rows; docs/DECISIONS.md). At the bound the
/// stage waits for the store, and the ingest queue behind it slows producers.
const MERGE_MAX: usize = 8 * super::BATCH;

/// De-duplicate, filter, enrich, route, encode, append; see the module docs of
/// [`crate::pipeline`].
#[derive(Debug)]
pub struct Stage {
    policy: Arc<TierPolicy>,
    missing_tick: MissingTick,
    max_tick_ahead_ns: i64,
    ticks: TickWriter,
    channels: Arc<ChannelSet>,
    producers: Arc<ProducerRegistry>,
    stats: Arc<PipelineStats>,
    seqs: ProducerSeqs,
    ids: RecentIds,
    delays: [Option<DelayLine>; 4],
    channel_names: [String; 4],
    /// Producer slots whose seq advanced in this batch; acked at the batch's end.
    touched: Vec<u32>,
    slots: Vec<Option<Arc<ProducerSlot>>>,
    /// Reused buffers: the `data` object of the signal being routed, one channel's
    /// SIGNAL_UPDATE, and the message being assembled.
    data: Vec<u8>,
    text: Vec<u8>,
    scratch: Vec<u8>,
    appended: bool,
    /// Engine role: routed signals go here instead of the channel logs.
    sink: Option<Box<dyn Publish>>,
    /// Where routed signals are made durable before they enter the channel logs, and
    /// what waits for the commit: (tier, message meta, data) per channel.
    archive: Option<Box<dyn Archive>>,
    /// Or the archive on a thread of its own (see [`super::commit`]), with what the
    /// batches since the last hand-over stage for it, those batches (waiting for the
    /// store to finish the one it is writing), and the batches it is writing.
    committer: Option<Committer>,
    staged: Vec<Staged>,
    waiting: Batch,
    in_flight: Option<Batch>,
    /// The current batch's held messages, and their count per tier.
    held: Vec<Held>,
    batch_per_tier: [u64; 4],
    /// Messages held per tier, in flight included: the next seq of a tier is its head
    /// plus these plus one.
    held_per_tier: [u64; 4],
    /// Callbacks to run once this batch is routed (and durable).
    done: Vec<Done>,
    /// What became of each routed signal (`None`: `max_open_signals` is 0), and the
    /// closes it reported, waiting to be published.
    tracker: Option<Tracker>,
    closes: Vec<Close>,
    /// Scale-out (an engine node): the open signals of symbols other nodes track, which
    /// symbols this node tracks, and the consumer's rebalances to apply before each item.
    handover: Option<Handover>,
    rebalances: Option<Arc<Rebalances>>,
    standby_full_logged: bool,
}

impl Stage {
    pub fn new(
        config: &EngineConfig,
        policy: Arc<TierPolicy>,
        ticks: TickWriter,
        channels: Arc<ChannelSet>,
        producers: Arc<ProducerRegistry>,
        stats: Arc<PipelineStats>,
    ) -> Self {
        let delays = Tier::ALL.map(|t| {
            channels.delayed(t).map(|_| DelayLine::new(policy.delayed_view(t), config.delay_capacity))
        });
        Self {
            missing_tick: config.missing_tick,
            max_tick_ahead_ns: i64::try_from(config.max_tick_ahead_ms.saturating_mul(1_000_000))
                .unwrap_or(i64::MAX),
            ticks,
            seqs: ProducerSeqs::default(),
            ids: RecentIds::new(config.dedup_window),
            delays,
            channel_names: Tier::ALL.map(|t| ChannelName::Signals(t).to_string()),
            touched: Vec::new(),
            slots: Vec::new(),
            data: Vec::with_capacity(1024),
            text: Vec::with_capacity(1024),
            scratch: Vec::with_capacity(1024),
            appended: false,
            sink: None,
            archive: None,
            committer: None,
            staged: Vec::new(),
            waiting: Batch::default(),
            in_flight: None,
            held: Vec::new(),
            batch_per_tier: [0; 4],
            held_per_tier: [0; 4],
            done: Vec::new(),
            tracker: (config.max_open_signals > 0).then(|| Tracker::new(config.max_open_signals)),
            closes: Vec::new(),
            handover: None,
            rebalances: None,
            standby_full_logged: false,
            policy,
            channels,
            producers,
            stats,
        }
    }

    /// An engine node in scale-out: open signals follow their symbol's partition from
    /// node to node (fed with [`IngestItem::Handover`], and the consumer's `rebalances`).
    /// Nothing without a tracker.
    #[must_use]
    pub fn with_handover(mut self, rebalances: Arc<Rebalances>) -> Self {
        self.handover = self.tracker.as_ref().map(|_| Handover::new(self.max_open_signals()));
        self.rebalances = Some(rebalances);
        self
    }

    fn max_open_signals(&self) -> usize {
        self.tracker.as_ref().map_or(0, Tracker::max_open)
    }

    /// Sends routed signals to `sink` (an engine node's `signals.<tier>` topics) instead
    /// of this process's channel logs.
    #[must_use]
    pub fn with_sink(mut self, sink: Box<dyn Publish>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Makes routed signals durable in `archive` before they enter the channel logs and
    /// before their producers are acknowledged ([`Archive`]). The commit runs on the
    /// stage's thread, at the end of each batch (deterministic: what tests drive).
    #[must_use]
    pub fn with_archive(mut self, archive: Box<dyn Archive>) -> Self {
        self.archive = Some(archive);
        self
    }

    /// [`Stage::with_archive`] with the archive on a thread of its own: a batch is
    /// written while the next one is routed ([`super::commit`]). What a node runs.
    pub fn with_archive_thread(mut self, archive: Box<dyn Archive>) -> std::io::Result<Self> {
        self.committer = Some(Committer::start(archive, Arc::clone(&self.stats))?);
        Ok(self)
    }

    /// Woken when the archive's thread has stored a batch; the stage's loop then calls
    /// [`Stage::poll_committed`].
    pub fn commit_waker(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.committer.as_ref().map(Committer::waker)
    }

    /// Lets out the batches in flight if the archive's thread has stored them, and hands
    /// over those that waited behind them.
    pub fn poll_committed(&mut self) {
        let Some(c) = &self.committer else { return };
        if self.in_flight.is_none() {
            return;
        }
        match c.is_done() {
            Ok(false) => {}
            Ok(true) => {
                if let Some(b) = self.in_flight.take() {
                    self.let_out(b);
                }
                self.hand_over();
            }
            // The store's thread died: the process is ending (a critical thread).
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits until everything routed is stored and let out (when the stage stops).
    pub fn wait_committed(&mut self) {
        while self.in_flight.is_some() {
            self.wait_in_flight();
            self.hand_over();
        }
    }

    /// Waits for the batches in flight and lets them out.
    fn wait_in_flight(&mut self) {
        let Some(b) = self.in_flight.take() else { return };
        if let Some(c) = &self.committer
            && let Err(e) = c.wait()
        {
            // The store's thread died: the process is ending (a critical thread).
            panic!("{e}");
        }
        self.let_out(b);
    }

    /// Hands the waiting batches to the archive's thread (nothing may be in flight), or
    /// lets them out at once when they stored nothing (drops, duplicates).
    fn hand_over(&mut self) {
        debug_assert!(self.in_flight.is_none(), "one commit at a time");
        let batch = std::mem::take(&mut self.waiting);
        let staged = std::mem::take(&mut self.staged);
        if staged.is_empty() {
            return self.let_out(batch);
        }
        if let Some(c) = &self.committer
            && let Err(e) = c.submit(staged)
        {
            // The store's thread died: the process is ending (a critical thread).
            panic!("{e}");
        }
        self.in_flight = Some(batch);
    }

    /// Puts back message `meta.seq` of `signals_<tier>` from the store, before anything
    /// is routed: oldest first, the last ring's worth. Seqs before the first one put
    /// back are marked lost (a resume from there needs history), and each message goes
    /// through the delay line again, so the delayed views are rebuilt too.
    pub fn restore(&mut self, tier: Tier, meta: &MessageMeta, data: &[u8]) {
        let live = self.channels.live(tier);
        if live.head() == 0 && meta.seq > 1 {
            live.mark_lost(meta.seq - 1);
            if let Some(view) = self.channels.delayed(tier) {
                view.mark_lost(meta.seq - 1);
            }
        }
        if meta.seq <= self.channels.live(tier).head() {
            return;
        }
        self.data.clear();
        self.data.extend_from_slice(data);
        self.append(tier, meta);
    }

    /// After [`Stage::restore`]: a channel whose stored head is above the last message put
    /// back (the newest seqs were pruned, or a close of a pruned signal took them) goes
    /// on after that head, those seqs marked lost: none is given twice.
    pub fn restore_head(&mut self, tier: Tier, head: u64) {
        if self.channels.live(tier).head() < head {
            self.channels.live(tier).mark_lost(head);
            if let Some(view) = self.channels.delayed(tier) {
                view.mark_lost(head);
            }
        }
    }

    /// Remembers ids routed before this stage started (read back from where an earlier
    /// run published them), so that signals re-consumed after a crash are not routed twice.
    pub fn seed_ids(&mut self, ids: impl IntoIterator<Item = uuid::Uuid>) {
        for id in ids {
            self.ids.insert(id);
        }
    }

    /// Takes one item; `now` is the routing time.
    pub fn handle(&mut self, item: IngestItem, now: UnixNanos) {
        if self.rebalances.is_some() {
            self.apply_rebalances();
        }
        match item {
            IngestItem::Signal(s) => self.on_signal(&s, now),
            IngestItem::Tick(t) => self.on_tick(&t, now),
            IngestItem::Routed(r) => self.on_routed(*r),
            IngestItem::Done(d) => self.done.push(d),
            IngestItem::Handover(h) => self.on_handover(h, now),
        }
    }

    fn on_handover(&mut self, item: HandoverItem, now: UnixNanos) {
        let (Some(handover), Some(tracker)) = (&mut self.handover, &mut self.tracker) else { return };
        let reopen: Vec<Tracked> = match item {
            HandoverItem::Peer(PeerEvent::Open(t)) => {
                // What another node routed: a re-read of its raw record after a
                // takeover is a duplicate here too.
                self.ids.insert(t.id);
                handover.peer_open(*t).into_iter().collect()
            }
            HandoverItem::Peer(PeerEvent::Close { id, key }) => {
                // Closed elsewhere (both nodes tracked it for a moment): once is enough.
                if handover.peer_close(id, key) {
                    tracker.forget(id);
                }
                Vec::new()
            }
            HandoverItem::Peer(PeerEvent::CaughtUp) => handover.caught_up(),
            HandoverItem::Owned { key, partition } => {
                let taken = handover.owned(key, partition);
                tracing::debug!(symbol = %key.0, partition, active = handover.is_active(&key), taken = taken.len(), "symbol owned here");
                taken
            }
        };
        for signal in reopen {
            // An id tracked here already is passed over by the tracker.
            if tracker.reopen(signal).is_err() {
                self.stats.untracked();
            }
        }
        self.note_standby();
        // What expired while nobody tracked it closes now.
        if let Some(tracker) = &mut self.tracker {
            tracker.expire(now, &mut self.closes);
        }
        self.publish_closes(now);
    }

    /// Applies the rebalances the consumer learnt of since the last item: the symbols of
    /// revoked partitions leave the tracker for standby before anything queued behind
    /// the revocation is taken.
    fn apply_rebalances(&mut self) {
        let (Some(rebalances), Some(handover), Some(tracker)) =
            (&self.rebalances, &mut self.handover, &mut self.tracker)
        else {
            return;
        };
        let Some(events) = rebalances.take() else { return };
        for (assigned, partitions) in events {
            let keys = handover.rebalance(assigned, &partitions);
            let back = tracker.take_books(&keys);
            tracing::debug!(
                assigned,
                ?partitions,
                symbols = keys.len(),
                to_standby = back.len(),
                "rebalance applied"
            );
            handover.put_back(back);
        }
        self.stats.set_open_signals(tracker.len());
        self.note_standby();
    }

    /// The standby gauge, and a warning the first time standby was full.
    fn note_standby(&mut self) {
        let Some(handover) = &self.handover else { return };
        self.stats.set_standby_signals(handover.standby_len());
        if handover.dropped() > 0 && !self.standby_full_logged {
            self.standby_full_logged = true;
            tracing::warn!(
                max = self.max_open_signals(),
                "outcome standby is full (engine.max_open_signals): open signals of other nodes beyond it cannot be taken over here"
            );
        }
    }

    fn on_tick(&mut self, t: &Tick, now: UnixNanos) {
        self.stats.tick_in();
        if t.ts.0 > now.0.saturating_add(self.max_tick_ahead_ns) {
            self.stats.dropped(DropReason::FutureTick);
            return;
        }
        match self.ticks.update(t) {
            TickUpdate::Applied(_) => {
                if let Some(tracker) = &mut self.tracker {
                    // Closed when the engine saw the tick (a producer's tick time is its own).
                    tracker.on_tick(&t.symbol, &t.exchange, t.last, now, &mut self.closes);
                    self.publish_closes(now);
                }
            }
            TickUpdate::Stale(_) => self.stats.dropped(DropReason::StaleTick),
            TickUpdate::BookFull => self.stats.dropped(DropReason::TickBookFull),
        }
    }

    fn on_signal(&mut self, item: &SignalItem, now: UnixNanos) {
        let outcome = self.route_signal(item, now);
        if let Some(v) = &item.verdict {
            v.set(outcome);
        }
    }

    fn route_signal(&mut self, item: &SignalItem, now: UnixNanos) -> Outcome {
        self.stats.signal_in();
        if let Origin::Producer { slot, seq } = item.origin {
            if !self.seqs.accept(slot, seq) {
                self.stats.dropped(DropReason::DuplicateSeq);
                return Outcome::Dropped(DropReason::DuplicateSeq);
            }
            self.touched.push(slot);
        }
        let s = &item.signal;
        if !self.ids.insert(s.id) {
            self.stats.dropped(DropReason::DuplicateId);
            return Outcome::Dropped(DropReason::DuplicateId);
        }
        if let Err(reason) = filter::check(&self.policy, s, now) {
            self.stats.dropped(reason);
            return Outcome::Dropped(reason);
        }
        let market = self.ticks.latest(&s.symbol, &s.exchange).map(|t| enrich::snapshot(&t, now));
        if market.is_none() && self.missing_tick == MissingTick::Drop {
            self.stats.dropped(DropReason::MissingTick);
            return Outcome::Dropped(DropReason::MissingTick);
        }
        // A bitmask, not the iterator: appending needs `&mut self`.
        let tiers: u8 = route::tiers(&self.policy, s.confidence).fold(0, |m, t| m | 1 << t.index());
        if tiers == 0 {
            self.stats.dropped(DropReason::NoTier);
            return Outcome::Dropped(DropReason::NoTier);
        }
        self.data.clear();
        encode::signal_data(&mut self.data, s, market.as_ref(), item.ingest_ts, now, item.sent_ts);
        if self.archive.is_some() || self.committer.is_some() {
            self.hold(item, market.as_ref(), tiers, now);
        } else {
            self.publish(item, tiers, now);
        }
        self.track(&item.signal, market.as_ref(), tiers, item.origin, now);
        Outcome::Routed
    }

    /// Without an archive: the routed signal goes to the sink or the channel logs.
    fn publish(&mut self, item: &SignalItem, tiers: u8, now: UnixNanos) {
        let slot = match (&self.sink, item.origin) {
            (Some(_), Origin::Producer { slot, .. }) => self.slot(slot),
            _ => None,
        };
        let producer = slot.as_ref().map(|p| p.id.as_str()).or(item.verdict.as_ref().map(|v| &*v.producer));
        for tier in Tier::ALL.into_iter().filter(|t| tiers & 1 << t.index() != 0) {
            self.stats.routed_to(tier);
            if let Some(sink) = &mut self.sink {
                sink.publish(&Routed {
                    tier,
                    id: item.signal.id,
                    category: item.signal.category,
                    data: &self.data,
                    ingest_ts: item.ingest_ts,
                    routed_ts: now,
                    sent_ts: item.sent_ts,
                    producer,
                });
                continue;
            }
            let meta = MessageMeta {
                seq: self.channels.live(tier).head() + 1,
                category: item.signal.category,
                ingest_ts: item.ingest_ts,
                routed_ts: now,
                sent_ts: item.sent_ts,
                outcome: false,
            };
            self.append(tier, &meta);
        }
    }

    /// Starts tracking what becomes of a routed signal (`self.data` is its data); an
    /// `exit` may close its source's positions at once.
    fn track(
        &mut self,
        s: &crate::model::Signal,
        market: Option<&crate::model::MarketSnapshot>,
        tiers: u8,
        origin: Origin,
        now: UnixNanos,
    ) {
        let Some(tracker) = &mut self.tracker else { return };
        let tracked = Tracked::new(s, market.map(|m| m.last), tiers, &self.data);
        if let Some(h) = &mut self.handover {
            let key = (s.symbol, s.exchange);
            match origin {
                // Taken before its partition was revoked: the new owner tracks it.
                Origin::Kafka { .. } if !h.is_active(&key) => {
                    h.put_back([tracked]);
                    self.note_standby();
                    return;
                }
                Origin::Kafka { .. } => {}
                _ => h.tracked_here(key),
            }
        }
        if tracker.open(tracked, now, &mut self.closes).is_err() {
            self.stats.untracked();
        }
        self.publish_closes(now);
    }

    /// Puts a signal that was open when the node stopped back under tracking (read
    /// back from the store at start, before anything is routed).
    pub fn reopen(&mut self, signal: Tracked) {
        let Some(tracker) = &mut self.tracker else { return };
        if tracker.reopen(signal).is_err() {
            self.stats.untracked();
        }
        self.stats.set_open_signals(tracker.len());
    }

    /// Publishes the closes the tracker reported: each on every channel that carried
    /// its signal, with new seqs, held for the archive as signals are.
    fn publish_closes(&mut self, now: UnixNanos) {
        if let Some(t) = &self.tracker {
            self.stats.set_open_signals(t.len());
        }
        for close in std::mem::take(&mut self.closes) {
            self.stats.closed(close.status);
            tracing::debug!(id = %close.signal.id, symbol = %close.signal.symbol, tiers = close.signal.tiers, status = ?close.status, "closed");
            if let Some(h) = &mut self.handover {
                h.closed_here(close.signal.id);
            }
            encode::close_data(&mut self.data, &close.signal.data, &close);
            let tiers = close.signal.tiers;
            if self.archive.is_none() && self.committer.is_none() {
                for tier in Tier::ALL.into_iter().filter(|t| tiers & 1 << t.index() != 0) {
                    if let Some(sink) = &mut self.sink {
                        sink.publish(&Routed {
                            tier,
                            id: close.signal.id,
                            category: close.signal.category,
                            data: &self.data,
                            ingest_ts: now,
                            routed_ts: now,
                            sent_ts: None,
                            producer: None,
                        });
                        continue;
                    }
                    let meta = MessageMeta {
                        seq: self.channels.live(tier).head() + 1,
                        category: close.signal.category,
                        ingest_ts: now,
                        routed_ts: now,
                        sent_ts: None,
                        outcome: true,
                    };
                    self.append(tier, &meta);
                }
                continue;
            }
            let (channels, n) = self.hold_messages(tiers, close.signal.category, now, now, None, true);
            if self.committer.is_some() {
                self.staged.push(Staged::Close(StagedClose { close, data: self.data.clone(), channels, n }));
            } else if let Some(archive) = self.archive.as_mut() {
                archive.stage_close(&ArchivedClose {
                    close: &close,
                    data: &self.data,
                    channels: &channels[..n],
                });
            }
        }
    }

    /// With an archive: takes the signal's seqs (after the ones already held in this
    /// batch), stages it in the archive, and holds its messages until the commit.
    fn hold(
        &mut self,
        item: &SignalItem,
        market: Option<&crate::model::MarketSnapshot>,
        tiers: u8,
        now: UnixNanos,
    ) {
        let (channels, n) =
            self.hold_messages(tiers, item.signal.category, item.ingest_ts, now, item.sent_ts, false);
        let producer = match item.origin {
            Origin::Producer { slot, .. } => self.slot(slot),
            _ => None,
        };
        let producer = producer.as_ref().map(|p| p.id.as_str());
        let producer = producer.or(item.verdict.as_ref().map(|v| &*v.producer));
        if self.committer.is_some() {
            self.staged.push(Staged::Signal(StagedSignal {
                signal: item.signal.clone(),
                producer: producer.map(str::to_owned),
                data: self.data.clone(),
                market: market.copied(),
                ingest_ts: item.ingest_ts,
                routed_ts: now,
                channels,
                n,
            }));
            return;
        }
        let Some(archive) = self.archive.as_mut() else { return };
        archive.stage(&Archived {
            signal: &item.signal,
            producer,
            data: &self.data,
            market,
            ingest_ts: item.ingest_ts,
            routed_ts: now,
            channels: &channels[..n],
        });
    }

    /// Takes the next seq of each tier in `tiers` (after those already held) for
    /// `self.data`, and holds its messages until the commit: the channels and seqs, and
    /// how many.
    fn hold_messages(
        &mut self,
        tiers: u8,
        category: crate::model::Category,
        ingest_ts: UnixNanos,
        routed_ts: UnixNanos,
        sent_ts: Option<UnixNanos>,
        outcome: bool,
    ) -> ([(Tier, u64); 4], usize) {
        let mut channels = [(Tier::Free, 0u64); 4];
        let mut metas = Vec::with_capacity(4);
        for tier in Tier::ALL.into_iter().filter(|t| tiers & 1 << t.index() != 0) {
            if !outcome {
                self.stats.routed_to(tier);
            }
            self.held_per_tier[tier.index()] += 1;
            self.batch_per_tier[tier.index()] += 1;
            let seq = self.channels.live(tier).head() + self.held_per_tier[tier.index()];
            let meta = MessageMeta { seq, category, ingest_ts, routed_ts, sent_ts, outcome };
            channels[metas.len()] = (tier, seq);
            metas.push((tier, meta));
        }
        let n = metas.len();
        self.held.push((self.data.clone(), metas));
        (channels, n)
    }

    /// Lets a batch out: its messages enter the logs (and delay lines), its producers
    /// are acknowledged, its callbacks run, and the channel bell rings.
    fn let_out(&mut self, b: Batch) {
        for (data, metas) in b.held {
            self.data = data;
            for (tier, meta) in metas {
                self.append(tier, &meta);
            }
        }
        for (held, n) in self.held_per_tier.iter_mut().zip(b.per_tier) {
            *held -= n;
        }
        for (index, seq) in b.acks {
            if let Some(slot) = self.slot(index) {
                slot.set_acked(seq);
            }
        }
        for d in b.done {
            (d.0)();
        }
        if std::mem::take(&mut self.appended) {
            self.channels.notify();
        }
    }

    /// A signal another node routed: appended with the seq it was given. Seqs at or
    /// below the head were seen already (a re-read); a jump marks what lies between as
    /// lost, so that no resume claims to recover across it.
    fn on_routed(&mut self, mut r: RoutedItem) {
        let head = self.channels.live(r.tier).head();
        if r.seq <= head {
            self.stats.dropped(DropReason::DuplicateSeq);
            return;
        }
        // Seqs the relay dropped on purpose are missing, not lost.
        let lost_through = r.seq.saturating_sub(r.skipped).saturating_sub(1);
        if lost_through > head {
            self.channels.live(r.tier).mark_lost(lost_through);
            if let Some(view) = self.channels.delayed(r.tier) {
                view.mark_lost(lost_through);
            }
        }
        self.stats.routed_to(r.tier);
        // The record's bytes become the data to encode: moved, not copied.
        std::mem::swap(&mut self.data, &mut r.data);
        self.append(r.tier, &r.meta());
    }

    /// Encodes `self.data` as `signals_<tier>`'s message `meta.seq`, appends it to the
    /// live log and queues it for the delayed view.
    fn append(&mut self, tier: Tier, meta: &MessageMeta) {
        encode::signal_update(&mut self.text, &self.channel_names[tier.index()], meta.seq, &self.data);
        let msg = Message::new(meta, &self.text, &mut self.scratch);
        self.channels.live(tier).append(msg.clone());
        if let Some(line) = &mut self.delays[tier.index()]
            && let Some(lost) = line.push(meta.ingest_ts, msg)
        {
            if let Some(view) = self.channels.delayed(tier) {
                view.mark_lost(lost.seq());
            }
            self.stats.dropped(DropReason::DelayOverflow);
        }
        self.appended = true;
    }

    /// Closes the signals that expired by `now`, then moves every delayed message that
    /// is due into its delayed view.
    pub fn release_due(&mut self, now: UnixNanos) {
        // A partition revoked while the stage was idle: its signals expire elsewhere now.
        if self.rebalances.is_some() {
            self.apply_rebalances();
        }
        if let Some(tracker) = &mut self.tracker {
            tracker.expire(now, &mut self.closes);
            if !self.closes.is_empty() {
                self.publish_closes(now);
            }
        }
        for tier in Tier::ALL {
            let (Some(line), Some(view)) = (&mut self.delays[tier.index()], self.channels.delayed(tier))
            else {
                continue;
            };
            while let Some(msg) = line.pop_due(now) {
                view.append(msg);
                self.appended = true;
            }
        }
    }

    /// The earliest pending delayed release or expiry.
    pub fn next_release(&self) -> Option<UnixNanos> {
        let expiry = self.tracker.as_ref().and_then(Tracker::next_expiry);
        self.delays.iter().flatten().filter_map(DelayLine::next_release).chain(expiry).min()
    }

    /// Ends a batch: makes the sink or the archive durable, then acknowledges
    /// producers, runs [`Done`] callbacks and rings the channel bell once. With the
    /// archive on its own thread, the batch is handed over and let out when stored
    /// ([`Stage::poll_committed`]), once the one before it is.
    pub fn finish_batch(&mut self) {
        if let Some(sink) = &mut self.sink {
            sink.flush();
        }
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        let acks = touched.iter().map(|&i| (i, self.seqs.last(i))).collect();
        touched.clear();
        self.touched = touched;
        let batch = Batch {
            held: std::mem::take(&mut self.held),
            per_tier: std::mem::take(&mut self.batch_per_tier),
            acks,
            done: std::mem::take(&mut self.done),
        };
        if let Some(archive) = self.archive.as_mut() {
            commit::commit(archive.as_mut(), &self.stats);
            return self.let_out(batch);
        }
        if self.committer.is_none() {
            return self.let_out(batch);
        }
        // Acknowledgements are cumulative: this batch waits for the ones before it, and
        // while the store writes those, for their commit together with what follows.
        self.waiting.merge(batch);
        if self.in_flight.is_some() {
            self.poll_committed();
        }
        if self.in_flight.is_some() {
            if self.staged.len() < MERGE_MAX {
                return;
            }
            self.wait_in_flight();
        }
        if !self.waiting.is_empty() || !self.staged.is_empty() {
            self.hand_over();
        }
    }

    fn slot(&mut self, index: u32) -> Option<Arc<ProducerSlot>> {
        let i = index as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        if self.slots[i].is_none() {
            self.slots[i] = self.producers.slot(index);
        }
        self.slots[i].clone()
    }
}

#[cfg(test)]
mod tests;
