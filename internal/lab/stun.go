package lab

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// A minimal RFC 5389 binding: the request a client sends, and the success response a lab server
// gives, carrying the address it saw (XOR-MAPPED-ADDRESS) and its name (SOFTWARE).
const (
	stunHeaderLen       = 20
	stunMagicCookie     = 0x2112A442
	stunBindingRequest  = 0x0001
	stunBindingSuccess  = 0x0101
	stunAttrXorMapped   = 0x0020
	stunAttrSoftware    = 0x8022
	stunFamilyIPv4      = 0x01
	stunFamilyIPv6      = 0x02
	stunSoftwarePrefix  = "pairlb-lab "
	stunMaxSoftwareSize = 763
)

// stunRequest builds a binding request with transaction id tx and no attributes.
func stunRequest(tx [12]byte) []byte {
	b := make([]byte, stunHeaderLen)
	binary.BigEndian.PutUint16(b[0:], stunBindingRequest)
	binary.BigEndian.PutUint32(b[4:], stunMagicCookie)
	copy(b[8:], tx[:])
	return b
}

// parseSTUNRequest returns the transaction id of a binding request, or false for anything else.
func parseSTUNRequest(b []byte) ([12]byte, bool) {
	var tx [12]byte
	if len(b) < stunHeaderLen || binary.BigEndian.Uint16(b[0:]) != stunBindingRequest ||
		binary.BigEndian.Uint32(b[4:]) != stunMagicCookie ||
		int(binary.BigEndian.Uint16(b[2:]))+stunHeaderLen != len(b) {
		return tx, false
	}
	copy(tx[:], b[8:20])
	return tx, true
}

// stunSuccess builds the binding success response for tx: the peer's address XORed as RFC 5389
// section 15.2 says, and software naming the server.
func stunSuccess(tx [12]byte, peer netip.AddrPort, software string) []byte {
	if len(software) > stunMaxSoftwareSize {
		software = software[:stunMaxSoftwareSize]
	}
	ip := peer.Addr().Unmap()
	var mapped []byte
	x := make([]byte, 16)
	binary.BigEndian.PutUint32(x[0:], stunMagicCookie)
	copy(x[4:], tx[:])
	if ip.Is4() {
		a := ip.As4()
		mapped = []byte{0, stunFamilyIPv4, 0, 0, a[0] ^ x[0], a[1] ^ x[1], a[2] ^ x[2], a[3] ^ x[3]}
	} else {
		a := ip.As16()
		mapped = []byte{0, stunFamilyIPv6, 0, 0}
		for i := range 16 {
			mapped = append(mapped, a[i]^x[i])
		}
	}
	binary.BigEndian.PutUint16(mapped[2:], peer.Port()^uint16(stunMagicCookie>>16))

	b := make([]byte, stunHeaderLen, 64+len(software))
	binary.BigEndian.PutUint16(b[0:], stunBindingSuccess)
	binary.BigEndian.PutUint32(b[4:], stunMagicCookie)
	copy(b[8:], tx[:])
	b = appendAttr(b, stunAttrXorMapped, mapped)
	b = appendAttr(b, stunAttrSoftware, []byte(software))
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)-stunHeaderLen))
	return b
}

func appendAttr(b []byte, typ uint16, v []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// parseSTUNSuccess reads a binding success response to tx: the mapped address and software.
func parseSTUNSuccess(b []byte, tx [12]byte) (mapped netip.AddrPort, software string, err error) {
	if len(b) < stunHeaderLen || binary.BigEndian.Uint32(b[4:]) != stunMagicCookie || [12]byte(b[8:20]) != tx {
		return mapped, "", errors.New("not a STUN response to our request")
	}
	if t := binary.BigEndian.Uint16(b[0:]); t != stunBindingSuccess {
		return mapped, "", errors.New("STUN response is not a binding success")
	}
	if int(binary.BigEndian.Uint16(b[2:]))+stunHeaderLen != len(b) {
		return mapped, "", errors.New("STUN response length does not match")
	}
	x := make([]byte, 16)
	binary.BigEndian.PutUint32(x[0:], stunMagicCookie)
	copy(x[4:], tx[:])
	for rest := b[stunHeaderLen:]; len(rest) >= 4; {
		typ, n := binary.BigEndian.Uint16(rest[0:]), int(binary.BigEndian.Uint16(rest[2:]))
		if 4+n > len(rest) {
			return mapped, "", errors.New("STUN attribute overruns the message")
		}
		v := rest[4 : 4+n]
		switch typ {
		case stunAttrXorMapped:
			if len(v) < 8 {
				return mapped, "", errors.New("short XOR-MAPPED-ADDRESS")
			}
			port := binary.BigEndian.Uint16(v[2:]) ^ uint16(stunMagicCookie>>16)
			var ip netip.Addr
			switch {
			case v[1] == stunFamilyIPv4:
				ip = netip.AddrFrom4([4]byte{v[4] ^ x[0], v[5] ^ x[1], v[6] ^ x[2], v[7] ^ x[3]})
			case v[1] == stunFamilyIPv6 && len(v) >= 20:
				var a [16]byte
				for i := range 16 {
					a[i] = v[4+i] ^ x[i]
				}
				ip = netip.AddrFrom16(a)
			default:
				return mapped, "", errors.New("bad XOR-MAPPED-ADDRESS family")
			}
			mapped = netip.AddrPortFrom(ip, port)
		case stunAttrSoftware:
			software = string(v)
		}
		pad := (4 - n%4) % 4
		if 4+n+pad > len(rest) {
			break
		}
		rest = rest[4+n+pad:]
	}
	if !mapped.IsValid() {
		return mapped, software, errors.New("STUN response without XOR-MAPPED-ADDRESS")
	}
	return mapped, software, nil
}
