//! Sockets of one node: the cluster port (`multicastPort`: the multicast group's port, where
//! unicast `peers` reach the node too), the node's own unicast UDP port (it sends everything from
//! there, so replies find it), and its TCP port for state transfer and anti-entropy. The unicast
//! and TCP ports are ephemeral and announced in join messages.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

use crate::core::Role;
use crate::options::{Config, Family};
use crate::wire::NodeInfo;

/// Socket buffers large enough for bursts (a fragmented 1 MB session is ~750 datagrams);
/// the kernel caps them at net.core.rmem_max / wmem_max.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

pub struct Sockets {
    /// Receives the group's datagrams (and nothing else); `None` without multicast.
    pub group: Option<UdpSocket>,
    pub group_addr: Option<SocketAddr>,
    /// The cluster port on the interface address, where configured `peers` reach a node that
    /// does not know them yet; `None` without peers.
    pub listen: Option<UdpSocket>,
    /// Sends everything; receives unicast (NAKs, retransmissions, greetings).
    pub unicast: UdpSocket,
    pub tcp: TcpListener,
    /// What this node announces.
    pub me: NodeInfo,
}

/// The interface address to use: the configured one, or the first non-internal one.
pub struct Interface {
    pub ip: IpAddr,
    /// Interface index (IPv6 multicast needs it).
    pub index: u32,
}

pub fn interface(config: &Config) -> io::Result<Interface> {
    let configured: Option<IpAddr> = match config.family {
        Family::V4 => config.ipv4.map(IpAddr::V4),
        Family::V6 => config.ipv6.map(IpAddr::V6),
    };
    let interfaces = if_addrs::get_if_addrs()?;
    let found = interfaces.iter().find(|i| match configured {
        Some(ip) => i.ip() == ip,
        None => {
            !i.is_loopback()
                && match (config.family, i.ip()) {
                    (Family::V4, IpAddr::V4(_)) => true,
                    // Link-local addresses need a scope on every use: prefer routable ones.
                    (Family::V6, IpAddr::V6(ip)) => (ip.segments()[0] & 0xffc0) != 0xfe80,
                    _ => false,
                }
        }
    });
    match (found, configured) {
        (Some(i), _) => Ok(Interface { ip: i.ip(), index: i.index.unwrap_or(0) }),
        (None, Some(ip)) => Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("no network interface has the address {ip} (option \"{}\")", family_option(config.family)),
        )),
        (None, None) => Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!(
                "no non-internal {} interface found; set the \"{}\" option",
                family_option(config.family),
                family_option(config.family)
            ),
        )),
    }
}

fn family_option(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

fn udp_socket(domain: Domain) -> io::Result<Socket> {
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    // Best effort: a smaller buffer still works, with more retransmissions.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    Ok(socket)
}

/// Opens every socket of the node. Must run inside the tokio runtime.
pub fn open(config: &Config, role: Role) -> io::Result<Sockets> {
    let iface = interface(config)?;
    let domain = if iface.ip.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };

    let unicast = udp_socket(domain)?;
    if domain == Domain::IPV6 {
        unicast.set_only_v6(true)?;
    }
    bind(&unicast, SocketAddr::new(iface.ip, 0), "the node's unicast UDP port")?;

    let group_addr = config.multicast.map(|group| SocketAddr::new(group, config.multicast_port));
    let group = match (group_addr, iface.ip) {
        (None, _) => None,
        (Some(addr @ SocketAddr::V4(g)), IpAddr::V4(ip)) => {
            unicast.set_multicast_if_v4(&ip)?;
            unicast.set_multicast_ttl_v4(config.multicast_ttl)?;
            unicast.set_multicast_loop_v4(true)?;
            let socket = udp_socket(domain)?;
            socket.set_reuse_address(true)?;
            bind(&socket, bind_addr(addr), "the cluster's UDP port (multicastPort)")?;
            socket.join_multicast_v4(g.ip(), &ip)?;
            Some(socket)
        }
        (Some(addr @ SocketAddr::V6(g)), IpAddr::V6(_)) => {
            unicast.set_multicast_if_v6(iface.index)?;
            unicast.set_multicast_hops_v6(config.multicast_ttl)?;
            unicast.set_multicast_loop_v6(true)?;
            let socket = udp_socket(domain)?;
            socket.set_only_v6(true)?;
            socket.set_reuse_address(true)?;
            bind(&socket, bind_addr(addr), "the cluster's UDP port (multicastPort)")?;
            socket.join_multicast_v6(g.ip(), iface.index)?;
            Some(socket)
        }
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "multicast group and interface families differ")),
    };

    // An observer (the doctor) must not take the cluster port from the node it runs beside.
    let listen = if config.peers.is_empty() || role == Role::Observer {
        None
    } else {
        let socket = udp_socket(domain)?;
        if domain == Domain::IPV6 {
            socket.set_only_v6(true)?;
        }
        // Shared with the group socket's port (and with other nodes on the same host).
        socket.set_reuse_address(true)?;
        bind(&socket, SocketAddr::new(iface.ip, config.multicast_port), "the port peers reach (multicastPort)")?;
        Some(socket)
    };

    let tcp = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    tcp.set_nonblocking(true)?;
    if domain == Domain::IPV6 {
        tcp.set_only_v6(true)?;
    }
    bind(&tcp, SocketAddr::new(iface.ip, 0), "the node's TCP port")?;
    tcp.listen(128)?;

    let unicast = UdpSocket::from_std(unicast.into())?;
    let tcp = TcpListener::from_std(tcp.into())?;
    let listen_port = if listen.is_some() { config.multicast_port } else { 0 };
    let me = NodeInfo { addr: unicast.local_addr()?, tcp_port: tcp.local_addr()?.port(), listen_port };
    Ok(Sockets {
        group: group.map(|s| UdpSocket::from_std(s.into())).transpose()?,
        listen: listen.map(|s| UdpSocket::from_std(s.into())).transpose()?,
        group_addr,
        unicast,
        tcp,
        me,
    })
}

/// Binds, saying which address and what for when it fails (a port in use, most often).
fn bind(socket: &Socket, addr: SocketAddr, what: &str) -> io::Result<()> {
    socket.bind(&SockAddr::from(addr)).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::AddrInUse {
            ": another socket holds it and does not share it (SO_REUSEADDR)"
        } else {
            ""
        };
        io::Error::new(e.kind(), format!("cannot bind {what} at {addr}: {e}{hint}"))
    })
}

/// Where the group socket binds: the group address itself on Unix (so it receives only that
/// group), the wildcard elsewhere.
fn bind_addr(group: SocketAddr) -> SocketAddr {
    if cfg!(unix) && group.is_ipv4() {
        return group;
    }
    let any = match group {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(any, group.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(port: u16) -> Config {
        Config {
            ipv4: Some(Ipv4Addr::LOCALHOST),
            multicast_ttl: 0,
            multicast_port: port,
            cluster: "transport-test".into(),
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn group_datagrams_reach_every_node_on_loopback() {
        let config = loopback(34_000 + (std::process::id() % 1000) as u16);
        let a = open(&config, Role::Member).unwrap();
        let b = open(&config, Role::Member).unwrap();
        assert_eq!(a.me.addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_ne!(a.me.addr.port(), b.me.addr.port());
        a.unicast.send_to(b"hello", a.group_addr.unwrap()).await.unwrap();
        for node in [&a, &b] {
            let mut buf = [0u8; 16];
            let (n, from) = node.group.as_ref().unwrap().recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"hello");
            assert_eq!(from, a.me.addr, "replies go to the sender's unicast port");
        }
    }

    #[tokio::test]
    async fn peers_reach_the_cluster_port_without_multicast() {
        let port = 36_000 + (std::process::id() % 1000) as u16;
        let config = Config {
            multicast: None,
            peers: vec![crate::options::Peer { host: "127.0.0.1".into(), port }],
            ..loopback(port)
        };
        let node = open(&config, Role::Member).unwrap();
        assert!(node.group.is_none());
        assert_eq!(node.me.listen_port, port);
        node.unicast.send_to(b"hi", ("127.0.0.1", port)).await.unwrap();
        let mut buf = [0u8; 4];
        let (n, _) = node.listen.as_ref().unwrap().recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hi");
    }

    #[test]
    fn a_missing_interface_is_a_clear_error() {
        let config = Config { ipv4: Some(Ipv4Addr::new(203, 0, 113, 77)), ..Config::default() };
        let err = interface(&config).err().unwrap();
        assert!(err.to_string().contains("203.0.113.77"), "{err}");
    }
}
