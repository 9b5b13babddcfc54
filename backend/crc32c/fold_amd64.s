#include "textflag.h"

// Folding, as fold_amd64.go describes. Each 128-bit register holds 16
// message bytes as loaded (little endian: the first message bit at bit 0);
// the constants at k are pairs (for the register's low word, for its high
// word) for the distances of foldDistances, 16 bytes each:
// 0 2048 bits, 16 1536, 32 1024, 48 512, 64 384, 80 256, 96 128.
// A fold of register A into B, d bits ahead, is
//   B ^= clmul(A.lo, K.lo) ^ clmul(A.hi, K.hi)
// (VPCLMULQDQ immediates 0x00 and 0x11, lane by lane).

// func foldAVX512(crc uint32, p []byte, k *[7][2]uint64) uint32
// len(p) is a multiple of 64, at least 256. Four 512-bit registers, each
// four 128-bit lanes, fold 256 bytes per loop; then the four into one, the
// 64-byte blocks left, the four lanes into one; the remainder's CRC from 0,
// by the CRC32 instruction, is the raw CRC of p from crc.
TEXT ·foldAVX512(SB), NOSPLIT, $0-44
	MOVQ      p_base+8(FP), SI
	MOVQ      p_len+16(FP), CX
	MOVQ      k+32(FP), DX
	MOVL      crc+0(FP), AX
	VMOVD     AX, X0
	VMOVDQU64 0(SI), Z1
	VMOVDQU64 64(SI), Z2
	VMOVDQU64 128(SI), Z3
	VMOVDQU64 192(SI), Z4
	VPXORQ    Z0, Z1, Z1
	ADDQ      $256, SI
	SUBQ      $256, CX
	VBROADCASTI32X4 0(DX), Z0

avxLoop256:
	CMPQ       CX, $256
	JB         avxFour
	VMOVDQU64  0(SI), Z9
	VMOVDQU64  64(SI), Z10
	VMOVDQU64  128(SI), Z11
	VMOVDQU64  192(SI), Z12
	VPCLMULQDQ $0x11, Z0, Z1, Z5
	VPCLMULQDQ $0x11, Z0, Z2, Z6
	VPCLMULQDQ $0x11, Z0, Z3, Z7
	VPCLMULQDQ $0x11, Z0, Z4, Z8
	VPCLMULQDQ $0x00, Z0, Z1, Z1
	VPCLMULQDQ $0x00, Z0, Z2, Z2
	VPCLMULQDQ $0x00, Z0, Z3, Z3
	VPCLMULQDQ $0x00, Z0, Z4, Z4
	VPTERNLOGD $0x96, Z9, Z5, Z1
	VPTERNLOGD $0x96, Z10, Z6, Z2
	VPTERNLOGD $0x96, Z11, Z7, Z3
	VPTERNLOGD $0x96, Z12, Z8, Z4
	ADDQ       $256, SI
	SUBQ       $256, CX
	JMP        avxLoop256

avxFour:
	// Z1, Z2, Z3 into Z4: 192, 128 and 64 bytes ahead.
	VBROADCASTI32X4 16(DX), Z0
	VPCLMULQDQ      $0x11, Z0, Z1, Z5
	VPCLMULQDQ      $0x00, Z0, Z1, Z1
	VPTERNLOGD      $0x96, Z1, Z5, Z4
	VBROADCASTI32X4 32(DX), Z0
	VPCLMULQDQ      $0x11, Z0, Z2, Z5
	VPCLMULQDQ      $0x00, Z0, Z2, Z2
	VPTERNLOGD      $0x96, Z2, Z5, Z4
	VBROADCASTI32X4 48(DX), Z0
	VPCLMULQDQ      $0x11, Z0, Z3, Z5
	VPCLMULQDQ      $0x00, Z0, Z3, Z3
	VPTERNLOGD      $0x96, Z3, Z5, Z4

avxLoop64:
	// What is left, 64 bytes at a time (Z0 holds the 64-byte pairs).
	CMPQ       CX, $64
	JB         avxLanes
	VMOVDQU64  0(SI), Z9
	VPCLMULQDQ $0x11, Z0, Z4, Z5
	VPCLMULQDQ $0x00, Z0, Z4, Z4
	VPTERNLOGD $0x96, Z9, Z5, Z4
	ADDQ       $64, SI
	SUBQ       $64, CX
	JMP        avxLoop64

avxLanes:
	// Lanes 0, 1, 2 of Z4 into lane 3: 48, 32 and 16 bytes ahead.
	VEXTRACTI32X4 $1, Z4, X5
	VEXTRACTI32X4 $2, Z4, X6
	VEXTRACTI32X4 $3, Z4, X7
	VMOVDQU       64(DX), X0
	VPCLMULQDQ    $0x11, X0, X4, X8
	VPCLMULQDQ    $0x00, X0, X4, X4
	VPTERNLOGD    $0x96, X4, X8, X7
	VMOVDQU       80(DX), X0
	VPCLMULQDQ    $0x11, X0, X5, X8
	VPCLMULQDQ    $0x00, X0, X5, X5
	VPTERNLOGD    $0x96, X5, X8, X7
	VMOVDQU       96(DX), X0
	VPCLMULQDQ    $0x11, X0, X6, X8
	VPCLMULQDQ    $0x00, X0, X6, X6
	VPTERNLOGD    $0x96, X6, X8, X7
	VMOVQ         X7, AX
	VPEXTRQ       $1, X7, BX
	VZEROUPPER
	XORL          CX, CX
	CRC32Q        AX, CX
	CRC32Q        BX, CX
	MOVL          CX, ret+40(FP)
	RET
