"""What this machine has: CPU (one /proc/cpuinfo and sysctl parser), memory and GPUs (NVML)."""
