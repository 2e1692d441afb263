//! A socket's operations on shared streams (see `sharing`): joining the stream shared under an
//! operation's key once its resolver declared it shareable, and what the stream then says of it.

use futures_util::StreamExt;

use super::{Connection, Step};
use crate::{
    graphql::shareable::Lull,
    http::{
        sharing::{Groups, StreamNotice, Subscriber},
        ws::SlowClient,
    },
};

impl Connection {
    /// Moves an operation whose resolver declared it shareable, and that has not answered yet,
    /// from its own stream to the one shared under its key.
    pub(super) fn share(&mut self, id: String, lull: Lull) {
        let Some(operation) = self.operations.get_mut(&id).filter(|o| !o.answered) else {
            return;
        };
        let Some(own) = self.streams.remove(&id) else {
            return;
        };
        let payload = &operation.payload;
        let key = Groups::key(&payload.query, payload.operation_name.as_deref(), payload.variables.as_ref());
        let responses = own
            .filter_map(|step| async move {
                match step {
                    Step::Response(_, response) => Some(*response),
                    Step::Shareable(_) | Step::End => None,
                }
            })
            .boxed();
        let subscriber = Subscriber {
            id,
            result_type: self.protocol.result_type(),
            wire: self.outbox.wire.clone(),
            notices: self.notify.clone(),
        };
        operation.shared = Some(self.groups.join(key, subscriber, responses, lull));
    }

    /// What a shared stream says of one of this socket's operations; stale notices (of an
    /// operation completed since) are ignored.
    pub(super) async fn shared(&mut self, notice: StreamNotice) -> Result<(), SlowClient> {
        let member = match &notice {
            StreamNotice::Events { member, .. } | StreamNotice::Ended { member, .. } => *member,
        };
        let Some(id) = self
            .operations
            .iter()
            .find(|(_, o)| o.shared.as_ref().is_some_and(|m| m.number == member))
            .map(|(id, _)| id.clone())
        else {
            return Ok(());
        };
        match notice {
            StreamNotice::Events { events, .. } => self.outbox.queue(events).await,
            StreamNotice::Ended { late: true, .. } => {
                let Some(operation) = self.operations.get(&id) else {
                    return Ok(());
                };
                let (own, recheck) = self.start(&operation.payload, false);
                self.streams.insert(id.clone(), own);
                if let Some(operation) = self.operations.get_mut(&id) {
                    operation.shared = None;
                    operation.recheck = recheck;
                }
                Ok(())
            }
            StreamNotice::Ended { late: false, .. } => self.complete(id).await,
        }
    }
}
