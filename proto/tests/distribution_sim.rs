//! Release distribution on a virtual clock: a device fetches what it lacks of an offered
//! release over a reliable, ordered link (a QUIC stream) with random delays and connection
//! resets. Every artifact arrives whole, exactly the missing bytes are written, and a
//! download cut by a reset resumes where it stopped. No sockets, no sleeps.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use fleet_proto::Frame;
use fleet_proto::distribution::{
    DeviceReport, DistributeEvent, Distributor, FetchConfig, FetchEvent, Fetcher, Need, Offer, Step,
};
use fleet_proto::frame::Control;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

type Digest = [u8; 32];

/// One direction of a QUIC stream: frames arrive in order, each after a random delay (never
/// before the one sent before it).
#[derive(Default)]
struct Pipe {
    queue: VecDeque<(u64, Frame)>,
}

impl Pipe {
    fn send(&mut self, now: u64, frame: Frame, rng: &mut SmallRng) {
        let after = self.queue.back().map_or(now, |(t, _)| *t);
        // Frames pass through bytes-encoded, as on the wire.
        let frame = Frame::decode_body(&frame.encode()[4..]).unwrap();
        self.queue
            .push_back((after.max(now) + rng.random_range(1..20), frame));
    }

    fn deliver(&mut self, now: u64) -> Option<Frame> {
        if self.queue.front().is_some_and(|(t, _)| *t <= now) {
            return self.queue.pop_front().map(|(_, f)| f);
        }
        None
    }
}

struct Device {
    fetcher: Fetcher,
    held: HashMap<Digest, Vec<u8>>,
    manifest: BTreeMap<Digest, usize>,
    written: u64,
    done: bool,
}

impl Device {
    fn needs(&self) -> Vec<Need> {
        self.manifest
            .iter()
            .map(|(artifact, size)| Need {
                artifact: *artifact,
                size: *size as u64,
                have: self.held.get(artifact).map_or(0, |b| b.len() as u64),
            })
            .collect()
    }

    fn handle(&mut self, frame: Frame, artifacts: &HashMap<Digest, Vec<u8>>) {
        match self.fetcher.handle(frame).unwrap() {
            Some(FetchEvent::Offered(offer)) => {
                assert_eq!(offer.manifest, b"manifest");
                let needs = self.needs();
                if self.fetcher.fetch(offer.release, needs) {
                    self.done = true;
                }
            }
            Some(FetchEvent::Piece {
                artifact,
                offset,
                data,
            }) => {
                let held = self.held.entry(artifact).or_default();
                // The store takes a piece only where its download ends.
                assert_eq!(offset, held.len() as u64, "pieces arrive in order");
                held.extend_from_slice(&data);
                self.written += data.len() as u64;
                assert_eq!(&artifacts[&artifact][..held.len()], &held[..]);
                let have = held.len() as u64;
                if self.fetcher.written(artifact, have).is_some() {
                    self.done = true;
                }
            }
            Some(FetchEvent::Unavailable { artifact }) => panic!("{artifact:?} unavailable"),
            None => {}
        }
    }
}

fn digest(n: u8) -> Digest {
    [n; 32]
}

fn run(seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let sizes = [(1u8, 600_000usize), (2, 50_000), (3, 1_000_000), (4, 7)];
    let artifacts: HashMap<Digest, Vec<u8>> = sizes
        .iter()
        .map(|&(n, size)| {
            (
                digest(n),
                (0..size).map(|i| (i * n as usize) as u8).collect(),
            )
        })
        .collect();
    // The device holds artifact 1 from an earlier release and 100,000 bytes of artifact 3
    // from a download a crash cut short.
    let mut device = Device {
        fetcher: Fetcher::new(FetchConfig {
            window: 4,
            piece: 64 << 10,
        }),
        held: HashMap::from([
            (digest(1), artifacts[&digest(1)].clone()),
            (digest(3), artifacts[&digest(3)][..100_000].to_vec()),
        ]),
        manifest: sizes.iter().map(|&(n, s)| (digest(n), s)).collect(),
        written: 0,
        done: false,
    };
    let missing: u64 = 50_000 + 900_000 + 7;
    let offer = Offer {
        release: digest(99),
        manifest: b"manifest".to_vec(),
        signature: b"sig".to_vec(),
    };
    let servable: HashSet<Digest> = artifacts.keys().copied().collect();
    let mut resets = 0;
    let mut now = 0u64;
    'connections: loop {
        let mut distributor = Distributor::new();
        let (mut up, mut down) = (Pipe::default(), Pipe::default());
        device.fetcher.report(DeviceReport {
            offered: None,
            ..DeviceReport::default()
        });
        loop {
            now += 1;
            assert!(now < 1_000_000, "seed {seed}: no progress");
            while let Some(frame) = device.fetcher.poll_transmit() {
                up.send(now, frame, &mut rng);
            }
            while let Some(frame) = up.deliver(now) {
                match distributor.handle(frame).unwrap() {
                    DistributeEvent::Report(_) => {
                        if let Some(f) = distributor.offer(offer.clone(), servable.clone()) {
                            down.send(now, f, &mut rng);
                        }
                    }
                    DistributeEvent::Read {
                        artifact,
                        offset,
                        len,
                    } => {
                        let bytes = &artifacts[&artifact];
                        let end = (offset as usize + len as usize).min(bytes.len());
                        let piece = distributor.piece(
                            artifact,
                            offset,
                            bytes[offset as usize..end].to_vec(),
                        );
                        down.send(now, piece, &mut rng);
                    }
                    DistributeEvent::Reply(f) => down.send(now, f, &mut rng),
                }
            }
            while let Some(frame) = down.deliver(now) {
                device.handle(frame, &artifacts);
            }
            if device.done {
                break 'connections;
            }
            // Now and then the connection drops: whatever was in the pipes is lost.
            if rng.random_ratio(1, 400) && resets < 20 {
                resets += 1;
                device.fetcher.disconnected();
                continue 'connections;
            }
        }
    }
    for (artifact, bytes) in &artifacts {
        assert_eq!(&device.held[artifact], bytes, "seed {seed}");
    }
    assert_eq!(
        device.written, missing,
        "seed {seed}: only the missing bytes, once"
    );
}

#[test]
fn a_device_fetches_exactly_what_it_lacks_across_connection_resets() {
    for seed in 0..40 {
        run(seed);
    }
}

#[test]
fn steps_have_short_names_for_the_operator() {
    let failed = Step::Failed {
        reason: "signature".into(),
        message: "bad".into(),
    };
    assert_eq!(failed.name(), "failed");
    let frame = Frame::Control(Control::Report(DeviceReport {
        offered: Some((digest(1), failed)),
        ..DeviceReport::default()
    }));
    assert_eq!(Frame::decode_body(&frame.encode()[4..]).unwrap(), frame);
}
