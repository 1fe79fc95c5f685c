"""The server's HTTP/1.1 connections with the deadlines uvicorn lacks (it arms no timer before a
connection's first response: `timeout_keep_alive` starts in `on_response_complete`, and every byte
received cancels it), so a client trickling a byte every few seconds cannot hold a connection open:
a request's line and headers must arrive within HEADER_TIMEOUT_S of the connection opening (or of
the previous response ending), and its body within BODY_TIMEOUT_S of its headers (a backstop for
every route, Gradio's uploads too; the JSON API answers 408 sooner); else the connection is closed."""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 120.0
KEEP_ALIVE_S = 5  # an idle connection after a response (uvicorn's timeout_keep_alive)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol (its default without httptools) with a deadline per phase of a request."""

    def connection_made(self, transport):
        self.deadline, self.phase = None, None
        super().connection_made(transport)
        self.watch()

    def handle_events(self):  # after every data_received, pipelined requests included
        super().handle_events()
        self.watch()

    def on_response_complete(self):
        super().on_response_complete()
        self.watch()

    def connection_lost(self, exc):
        self.disarm()
        super().connection_lost(exc)

    def watch(self) -> None:
        """(Re)arm the deadline when the connection enters a phase: awaiting a request's headers (h11
        IDLE), or this request's body (SEND_BODY); none while the app works or answers."""
        state = self.conn.their_state
        timeout = HEADER_TIMEOUT_S if state is h11.IDLE else BODY_TIMEOUT_S if state is h11.SEND_BODY else None
        phase = (state, self.cycle) if timeout is not None else None  # a new request (cycle) re-arms
        if phase != self.phase:
            self.disarm()
            self.phase = phase
            if timeout is not None and not self.transport.is_closing():
                self.deadline = self.loop.call_later(timeout, self.expired)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def expired(self) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            self.transport.close()
