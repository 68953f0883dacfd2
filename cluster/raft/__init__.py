"""Pure Raft for many groups per node: the replication engine of metadata and mirrored queues.

No sockets, no clock, no threads in the core: a driver feeds it ticks and
peer batches and carries out what each `Ready` asks (etcd's Ready/advance
contract), for all groups of the node at once (as RabbitMQ's Ra runs
thousands of groups on one node).

Modules
-------
- `messages`  frozen message records, `PeerBatch` (everything one node sends
  another in one cycle) and its msgpack-friendly `to_wire()` / `from_wire()`.
- `log`       one group's in-memory log, `Conf`, the entry and snapshot encodings.
- `group`     one group's Raft state (`RaftGroup`), `RaftConfig`, result values.
- `node`      `RaftNode`: all groups of a node, one `Ready`, quiescence.
- `driver`    `RaftDriver`: the trio shell (store, `Transport`, `StateMachine`s).
- `sim`       the deterministic simulation (`python -m cluster.raft.sim --seed N`): fault
  model, clients, operators; `sim_invariants` the safety checks it runs after every
  step; `sim_schedules` the scripted Figure 8 schedule (docs/raft.md).
- `bench`     `python -m cluster.raft.bench`, figures for docs/performance.md.

Core API (`cluster.raft.node.RaftNode`)
---------------------------------------
    RaftNode(node_id: str, config: RaftConfig = RaftConfig(), *, rng: random.Random | None = None,
             incarnation: int = 0)
    .create_group(group, voters=(), learners=())      # initial members pass the same voters;
                                                       # a node being added passes none
    .restore_group(group, hard_state, snapshot, entries) -> Snapshot | None   # app snapshot to restore
    .drop_group(group)
    .tick() / .step(batch: PeerBatch)
    .propose(group, data: bytes) -> Proposed(group, index, term) | NotLeader(group, leader) | Refused
    .change_membership(group, ConfChange(op, node)) -> Proposed | NotLeader | Refused
          # op: "add_learner" | "add_voter" | "promote" | "remove"; one at a time; removing the
          # leader is allowed (it leads until the change commits, then hands over)
    .transfer_leadership(group, target) -> None | NotLeader | Refused
    .read_index(group, ctx) -> None | NotLeader | Refused   # ReadState(group, ctx, index, ok) later
    .compact(group, index, app_snapshot: bytes)             # after applying through index
    .campaign(group) / .is_leader(group) / .status(group) -> GroupStatus
    .ready() -> Ready | None ; .advance(ready)

    Ready: batch: WriteBatch (persist first, one write for all groups)
           messages: list[PeerBatch] (then send; one per destination node)
           snapshots: {group: Snapshot} (restore the state machine; data is the app's bytes)
           committed: {group: [LogEntry]} (apply in order; `log.entry_payload(e)` is None for
                      the core's own entries)
           read_states: [ReadState] (serve once applied >= index)

Driver API (`cluster.raft.driver.RaftDriver`)
---------------------------------------------
    RaftDriver(node, store: Store, transport: Transport, *, tick_interval=0.05,
               snapshot_every=10_000, write=None)
    .add_group(group, machine: StateMachine, voters=(), learners=())   # restores if stored
    await .run()                                           # the loop; start in a nursery
    await .propose(group, data) -> Applied(group, index, result) | NotLeader | Refused | Lost
    await .read(group, query: Callable[[machine], T]) -> T | NotLeader | Refused
    await .change_membership(group, ConfChange) / await .transfer_leadership(group, target)
    Transport: send(batch: PeerBatch) -> None ; received: trio ReceiveChannel[PeerBatch]
    StateMachine: apply(index, data) -> result ; snapshot() -> bytes ; restore(bytes)

Reads are linearizable through ReadIndex on the leader (no clock assumption):
a read is answered at the commit index seen when it arrived, after a
majority acknowledged a heartbeat sent after it, and only once the leader has
committed an entry of its own term; a deposed leader's pending reads fail.

Quiescence and node-level liveness are explained at the top of `node.py`.
"""
