//! A subscriber's direct path: a client connection the hub may hand frames
//! to itself, without waking the stream's task (an HTTP/2 stream's send
//! half: h2 then writes every frame queued on one connection in one go, one
//! TLS record and one syscall for a whole fan-out, instead of one per stream).
//!
//! The path is open ("armed") only while the stream is parked with its queue
//! empty: then nothing the stream writes can be overtaken by a frame sent
//! here. The stream disarms it as soon as it wakes, and every frame goes
//! through the queue until it parks again. Lock order: this slot, then the
//! queue.

use bytes::Bytes;
use std::any::Any;
use std::fmt;

/// Where the hub can hand a frame to the client at once.
pub trait Direct: Any + Send {
    /// Hand `frame` over now if it fits whole; false leaves it for the queue.
    fn try_send(&mut self, frame: &Bytes) -> bool;
}

/// The direct path of one subscriber, behind its mutex.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) sink: Option<Box<dyn Direct>>,
    /// The stream is parked with an empty queue: frames may go directly.
    pub(super) armed: bool,
    /// The highest cursor the client was given (directly or by the stream):
    /// a frame at or below it is a duplicate (a resume's replay overlapping
    /// live events) and is dropped, as the stream's drain does.
    pub(super) floor: u64,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("sink", &self.sink.is_some())
            .field("armed", &self.armed)
            .field("floor", &self.floor)
            .finish()
    }
}

/// What the direct path did with a frame.
pub(super) enum Tried {
    Sent,
    /// Already given (at or below the floor): nothing to do.
    Duplicate,
    /// Not armed, or no room: queue it.
    Queue,
}

impl Slot {
    /// Send `frame` (cursor `seq`, 0 for none) directly if the path is armed
    /// and `queue_empty`; a frame that does not fit disarms it, so that the
    /// frames after it queue behind it.
    pub(super) fn try_send(&mut self, seq: u64, frame: &Bytes, queue_empty: bool) -> Tried {
        if !self.armed {
            return Tried::Queue;
        }
        if seq != 0 && seq <= self.floor {
            return Tried::Duplicate;
        }
        let Some(sink) = self.sink.as_mut() else {
            return Tried::Queue;
        };
        if queue_empty && sink.try_send(frame) {
            self.floor = self.floor.max(seq);
            return Tried::Sent;
        }
        self.armed = false;
        Tried::Queue
    }

    /// The sink as its concrete type.
    pub(super) fn sink_mut<T: Direct>(&mut self) -> Option<&mut T> {
        let sink: &mut dyn Any = self.sink.as_deref_mut()?;
        sink.downcast_mut::<T>()
    }
}
