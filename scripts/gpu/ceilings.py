"""The two ceilings every rate of a GPU visit is read against, measured on this card with random
data (median of 10 after 3 warm-ups): a bf16 8192^3 matrix product and a 2 GiB device-to-device
copy (bytes read + written). One line on stdout; run by check.sh's machine section."""
import torch
def median_ms(fn):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[5]
n = 8192
x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
mm = 2 * n**3 / median_ms(lambda: x @ y) / 1e9
del x, y
src = torch.randn(2**29, device="cuda")  # 2 GiB of f32
dst = torch.empty_like(src)
# bytes per ms / 1e9 is TB/s (the first visit divided by 1000 again and printed 0.00)
cp = 2 * src.numel() * 4 / median_ms(lambda: dst.copy_(src)) / 1e9
print(f"ceilings: bf16 matmul {mm:.0f} TFLOP/s, copy {cp:.2f} TB/s")
