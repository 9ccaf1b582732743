//! Xenbus device states (`public/io/xenbus.h`) and the frontend/backend handshake as pure,
//! event-driven state machines.
//!
//! The machines do no I/O. The owner feeds them inputs (a watch fired on the peer's `state` node,
//! a setup step finished, the toolstack's `online` flag changed, the peer disappeared) and carries
//! out the returned [`BackendOutput`]/[`FrontendOutput`] in the documented order. The same
//! machines serve Xen (xenstore watches) and the QEMU channel (control page), which only differ in
//! how state nodes are read and written.
//!
//! Handshake (as Linux netback/netfront and blkback/blkfront do it):
//!
//! ```text
//! backend:  Initialising --probe--> InitWait ...................... Connected
//! frontend: Initialising ---(sees InitWait: setup rings, write keys)--> Initialised (block style)
//!                                                                   or Connected   (net style)
//! backend:  sees Initialised/Connected: map rings (Connect action) --ok--> Connected
//! frontend: (block style) sees backend Connected --> Connected
//! ```
//!
//! Teardown: either side goes Closing; the frontend answers a backend Closing/Closed by tearing
//! down and writing Closed; the backend answers a frontend Closing by disconnecting and writing
//! Closing, and a frontend Closed by writing Closed (and removing the device if the toolstack set
//! `online = 0`). A frontend whose `state` node vanished (domain destroyed) reads as `Unknown`: the
//! backend disconnects, writes Closed and removes the device. A frontend that comes back to
//! Initialising after Closed gets a fresh InitWait (reconnect, e.g. after a guest kexec).

use crate::Error;

/// `enum xenbus_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum XenbusState {
    /// 0: no state node / unknown.
    Unknown = 0,
    /// 1: initialising.
    Initialising = 1,
    /// 2: finished early init, waiting for the peer or hotplug.
    InitWait = 2,
    /// 3: initialised, waiting for the peer to connect.
    Initialised = 3,
    /// 4: connected.
    Connected = 4,
    /// 5: closing (error or unplug).
    Closing = 5,
    /// 6: closed.
    Closed = 6,
    /// 7: reconfiguring.
    Reconfiguring = 7,
    /// 8: reconfigured.
    Reconfigured = 8,
}

impl XenbusState {
    /// From the numeric value.
    pub fn from_u32(v: u32) -> Result<Self, Error> {
        use XenbusState::*;
        Ok(match v {
            0 => Unknown,
            1 => Initialising,
            2 => InitWait,
            3 => Initialised,
            4 => Connected,
            5 => Closing,
            6 => Closed,
            7 => Reconfiguring,
            8 => Reconfigured,
            _ => return Err(Error::BadState),
        })
    }

    /// Parses a `state` node value: exactly one decimal digit `0`..=`8` (what every toolstack and
    /// Linux writes); anything else is [`Error::BadState`].
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s.as_bytes() {
            [d @ b'0'..=b'8'] => Self::from_u32((d - b'0') as u32),
            _ => Err(Error::BadState),
        }
    }

    /// The value to write into a `state` node.
    pub fn as_str(self) -> &'static str {
        ["0", "1", "2", "3", "4", "5", "6", "7", "8"][self as usize]
    }

    /// Human-readable name (as in `xenbus_strstate`).
    pub fn name(self) -> &'static str {
        use XenbusState::*;
        match self {
            Unknown => "Unknown",
            Initialising => "Initialising",
            InitWait => "InitWait",
            Initialised => "Initialised",
            Connected => "Connected",
            Closing => "Closing",
            Closed => "Closed",
            Reconfiguring => "Reconfiguring",
            Reconfigured => "Reconfigured",
        }
    }
}

/// Inputs of the backend device machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendInput {
    /// The backend found its device directory and wrote its feature keys.
    Probed,
    /// The frontend's `state` node changed (a vanished node reads as `Unknown`).
    FrontendState(XenbusState),
    /// Result of the [`BackendOutput::connect`] step (read frontend keys, map rings, bind event
    /// channels).
    ConnectDone {
        /// Whether it succeeded.
        ok: bool,
    },
    /// The toolstack's `online` node changed.
    Online(bool),
}

/// What the backend owner must do, in this order: `disconnect`, `connect`, write `write_state`,
/// `remove`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendOutput {
    /// Unmap rings, unbind event channels, stop serving.
    pub disconnect: bool,
    /// Read the frontend's keys, map its rings, bind its event channels; report with
    /// [`BackendInput::ConnectDone`].
    pub connect: bool,
    /// Write this value to the backend's `state` node.
    pub write_state: Option<XenbusState>,
    /// Remove the device (unplugged by the toolstack or frontend gone).
    pub remove: bool,
}

/// Backend device handshake machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendFsm {
    state: XenbusState,
    online: bool,
    connecting: bool,
    removed: bool,
}

impl Default for BackendFsm {
    fn default() -> Self {
        Self::new()
    }
}

impl BackendFsm {
    /// A new device: state Initialising, online.
    pub const fn new() -> Self {
        Self {
            state: XenbusState::Initialising,
            online: true,
            connecting: false,
            removed: false,
        }
    }

    /// Our current (last written) state.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// Whether the device was removed (no further inputs have effect).
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    fn go(&mut self, out: &mut BackendOutput, s: XenbusState) {
        if self.state != s {
            self.state = s;
            out.write_state = Some(s);
        }
    }

    fn disconnect_if_needed(&mut self, out: &mut BackendOutput) {
        if self.state == XenbusState::Connected || self.connecting {
            out.disconnect = true;
            self.connecting = false;
        }
    }

    /// Feeds one input.
    pub fn on_input(&mut self, input: BackendInput) -> BackendOutput {
        use XenbusState::*;
        let mut out = BackendOutput::default();
        if self.removed {
            return out;
        }
        match input {
            BackendInput::Probed => {
                if self.state == Initialising {
                    self.go(&mut out, InitWait);
                }
            }
            BackendInput::FrontendState(fe) => match fe {
                Initialising => match self.state {
                    Closed => self.go(&mut out, InitWait),
                    Connected => {
                        // Frontend restarted without closing: drop the old rings, wait again.
                        self.disconnect_if_needed(&mut out);
                        self.go(&mut out, InitWait);
                    }
                    _ => {}
                },
                Initialised | Connected => {
                    if self.state == InitWait && !self.connecting && self.online {
                        self.connecting = true;
                        out.connect = true;
                    }
                }
                Closing => {
                    self.disconnect_if_needed(&mut out);
                    if self.state != Closed {
                        self.go(&mut out, Closing);
                    }
                }
                Closed => {
                    self.disconnect_if_needed(&mut out);
                    self.go(&mut out, Closed);
                    if !self.online {
                        out.remove = true;
                        self.removed = true;
                    }
                }
                Unknown => {
                    self.disconnect_if_needed(&mut out);
                    self.go(&mut out, Closed);
                    out.remove = true;
                    self.removed = true;
                }
                InitWait | Reconfiguring | Reconfigured => {}
            },
            BackendInput::ConnectDone { ok } => {
                if self.connecting {
                    self.connecting = false;
                    if ok {
                        self.go(&mut out, Connected);
                    } else {
                        out.disconnect = true;
                        self.go(&mut out, Closing);
                    }
                }
            }
            BackendInput::Online(on) => {
                self.online = on;
                if !on {
                    if self.state == Closed || self.state == Initialising {
                        out.remove = true;
                        self.removed = true;
                    } else {
                        self.disconnect_if_needed(&mut out);
                        self.go(&mut out, Closing);
                    }
                }
            }
        }
        out
    }
}

/// How a frontend announces itself after setting up its rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendStyle {
    /// Writes Connected right after setup (netfront).
    Net,
    /// Writes Initialised after setup and Connected once the backend is Connected (blkfront).
    Block,
}

/// Inputs of the frontend device machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendInput {
    /// The backend's `state` node changed (a vanished node reads as `Unknown`).
    BackendState(XenbusState),
    /// Result of the [`FrontendOutput::setup`] step (allocate and grant rings, bind event
    /// channels, write keys).
    SetupDone {
        /// Whether it succeeded.
        ok: bool,
    },
    /// The guest wants to unplug the device.
    Close,
}

/// What the frontend owner must do, in this order: `teardown`, `setup`, write `write_state`,
/// then report `ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrontendOutput {
    /// Revoke grants, free rings, unbind event channels.
    pub teardown: bool,
    /// Set up rings and write keys; report with [`FrontendInput::SetupDone`].
    pub setup: bool,
    /// Write this value to the frontend's `state` node.
    pub write_state: Option<XenbusState>,
    /// The backend is connected: the device may carry traffic.
    pub ready: bool,
}

/// Frontend device handshake machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendFsm {
    style: FrontendStyle,
    state: XenbusState,
    set_up: bool,
    setting_up: bool,
    backend: XenbusState,
}

impl FrontendFsm {
    /// A new device in state Initialising.
    pub const fn new(style: FrontendStyle) -> Self {
        Self {
            style,
            state: XenbusState::Initialising,
            set_up: false,
            setting_up: false,
            backend: XenbusState::Unknown,
        }
    }

    /// Our current (last written) state.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    fn go(&mut self, out: &mut FrontendOutput, s: XenbusState) {
        if self.state != s {
            self.state = s;
            out.write_state = Some(s);
        }
    }

    fn teardown_if_needed(&mut self, out: &mut FrontendOutput) {
        if self.set_up || self.setting_up {
            out.teardown = true;
            self.set_up = false;
            self.setting_up = false;
        }
    }

    /// Feeds one input.
    pub fn on_input(&mut self, input: FrontendInput) -> FrontendOutput {
        use XenbusState::*;
        let mut out = FrontendOutput::default();
        match input {
            FrontendInput::BackendState(be) => {
                self.backend = be;
                match be {
                    InitWait => {
                        if self.state == Closed {
                            // Backend offers a fresh connection after a close: start over
                            // (the next written state comes from the setup step).
                            self.state = Initialising;
                        }
                        if self.state == Initialising && !self.set_up && !self.setting_up {
                            self.setting_up = true;
                            out.setup = true;
                        }
                    }
                    Connected => {
                        if self.set_up && self.state == Initialised {
                            self.go(&mut out, Connected);
                        }
                        if self.set_up && self.state == Connected {
                            out.ready = true;
                        }
                    }
                    Closing | Closed | Unknown => {
                        self.teardown_if_needed(&mut out);
                        self.go(&mut out, Closed);
                    }
                    Initialising | Initialised | Reconfiguring | Reconfigured => {}
                }
            }
            FrontendInput::SetupDone { ok } => {
                if self.setting_up {
                    self.setting_up = false;
                    if ok {
                        self.set_up = true;
                        match self.style {
                            FrontendStyle::Net => {
                                self.go(&mut out, Connected);
                                out.ready = self.backend == Connected;
                            }
                            FrontendStyle::Block => {
                                if self.backend == Connected {
                                    self.go(&mut out, Connected);
                                    out.ready = true;
                                } else {
                                    self.go(&mut out, Initialised);
                                }
                            }
                        }
                    } else {
                        out.teardown = true;
                        self.go(&mut out, Closing);
                    }
                }
            }
            FrontendInput::Close => {
                if self.state != Closed {
                    self.go(&mut out, Closing);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use XenbusState::*;

    #[test]
    fn state_codes() {
        for v in 0..=8u32 {
            let s = XenbusState::from_u32(v).unwrap();
            assert_eq!(s as u32, v);
            assert_eq!(XenbusState::parse(s.as_str()), Ok(s));
        }
        assert_eq!(XenbusState::from_u32(9), Err(Error::BadState));
        for bad in ["", "9", "04", " 4", "4\n", "x", "-1"] {
            assert_eq!(XenbusState::parse(bad), Err(Error::BadState), "{bad:?}");
        }
        assert_eq!(Connected.name(), "Connected");
    }

    /// A tiny xenstore: both state nodes, delivering watch events until quiescent.
    struct Bus {
        fe: FrontendFsm,
        be: BackendFsm,
        fe_node: XenbusState,
        be_node: XenbusState,
        setups: u32,
        connects: u32,
        teardowns: u32,
        disconnects: u32,
        removed: bool,
        ready: bool,
        setup_ok: bool,
    }

    impl Bus {
        fn new(style: FrontendStyle) -> Self {
            Self {
                fe: FrontendFsm::new(style),
                be: BackendFsm::new(),
                fe_node: Initialising,
                be_node: Initialising,
                setups: 0,
                connects: 0,
                teardowns: 0,
                disconnects: 0,
                removed: false,
                ready: false,
                setup_ok: true,
            }
        }
        fn fe_out(&mut self, o: FrontendOutput) {
            if o.teardown {
                self.teardowns += 1;
            }
            if o.ready {
                self.ready = true;
            }
            if o.setup {
                self.setups += 1;
                let ok = self.setup_ok;
                let o2 = self.fe.on_input(FrontendInput::SetupDone { ok });
                self.fe_out(o2);
            }
            if let Some(s) = o.write_state {
                self.fe_node = s;
                let bo = self.be.on_input(BackendInput::FrontendState(s));
                self.be_out(bo);
            }
        }
        fn be_out(&mut self, o: BackendOutput) {
            if o.disconnect {
                self.disconnects += 1;
            }
            if o.connect {
                self.connects += 1;
                let o2 = self.be.on_input(BackendInput::ConnectDone { ok: true });
                self.be_out(o2);
            }
            if let Some(s) = o.write_state {
                self.be_node = s;
                let fo = self.fe.on_input(FrontendInput::BackendState(s));
                self.fe_out(fo);
            }
            if o.remove {
                self.removed = true;
            }
        }
    }

    #[test]
    fn net_and_block_handshakes_connect() {
        for style in [FrontendStyle::Net, FrontendStyle::Block] {
            let mut bus = Bus::new(style);
            let o = bus.be.on_input(BackendInput::Probed);
            bus.be_out(o);
            assert_eq!(
                (bus.fe_node, bus.be_node),
                (Connected, Connected),
                "{style:?}"
            );
            assert_eq!((bus.setups, bus.connects), (1, 1));
            assert!(bus.ready);
        }
    }

    #[test]
    fn frontend_close_then_reconnect() {
        let mut bus = Bus::new(FrontendStyle::Net);
        let o = bus.be.on_input(BackendInput::Probed);
        bus.be_out(o);
        let o = bus.fe.on_input(FrontendInput::Close);
        bus.fe_out(o);
        assert_eq!(bus.be_node, Closed);
        assert_eq!(bus.fe_node, Closed);
        assert_eq!((bus.disconnects, bus.teardowns), (1, 1));
        assert!(!bus.removed, "still online: the device stays");
        // Guest reloads its driver.
        bus.fe = FrontendFsm::new(FrontendStyle::Net);
        bus.fe_node = Initialising;
        let o = bus.be.on_input(BackendInput::FrontendState(Initialising));
        bus.be_out(o);
        assert_eq!((bus.fe_node, bus.be_node), (Connected, Connected));
        assert_eq!(bus.connects, 2);
    }

    #[test]
    fn frontend_vanishing_removes_backend() {
        let mut bus = Bus::new(FrontendStyle::Block);
        let o = bus.be.on_input(BackendInput::Probed);
        bus.be_out(o);
        let o = bus.be.on_input(BackendInput::FrontendState(Unknown));
        assert!(o.disconnect && o.remove);
        assert_eq!(o.write_state, Some(Closed));
        assert!(bus.be.is_removed());
        assert_eq!(
            bus.be.on_input(BackendInput::FrontendState(Connected)),
            BackendOutput::default()
        );
    }

    #[test]
    fn toolstack_unplug() {
        let mut bus = Bus::new(FrontendStyle::Net);
        let o = bus.be.on_input(BackendInput::Probed);
        bus.be_out(o);
        let o = bus.be.on_input(BackendInput::Online(false));
        bus.be_out(o);
        assert_eq!(bus.fe_node, Closed);
        assert_eq!(bus.be_node, Closed);
        assert!(bus.removed);
    }

    #[test]
    fn failed_setup_and_connect() {
        let mut bus = Bus::new(FrontendStyle::Block);
        bus.setup_ok = false;
        let o = bus.be.on_input(BackendInput::Probed);
        bus.be_out(o);
        assert_eq!(
            bus.fe_node, Closed,
            "frontend gave up and the backend closed too"
        );
        assert_eq!(bus.connects, 0);
        let mut be = BackendFsm::new();
        be.on_input(BackendInput::Probed);
        let o = be.on_input(BackendInput::FrontendState(Initialised));
        assert!(o.connect);
        let o = be.on_input(BackendInput::ConnectDone { ok: false });
        assert_eq!(o.write_state, Some(Closing));
        assert!(o.disconnect);
    }

    #[test]
    fn connect_is_requested_once() {
        let mut be = BackendFsm::new();
        be.on_input(BackendInput::Probed);
        assert!(
            be.on_input(BackendInput::FrontendState(Initialised))
                .connect
        );
        assert!(!be.on_input(BackendInput::FrontendState(Connected)).connect);
        assert_eq!(
            be.on_input(BackendInput::ConnectDone { ok: true })
                .write_state,
            Some(Connected)
        );
        assert_eq!(
            be.on_input(BackendInput::FrontendState(Connected)),
            BackendOutput::default()
        );
    }
}
