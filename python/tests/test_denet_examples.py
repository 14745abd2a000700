"""denet's documentation examples (docs/execute_with_monitoring.md of denet),
unchanged apart from the import line; the scripts they run are made here."""

import json
import os
import subprocess

import pytest

from denet_agent import execute_with_monitoring


@pytest.fixture
def scripts(tmp_path, monkeypatch, python_on_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_script.py").write_text("print('hello')\n")
    (tmp_path / "compute_intensive.py").write_text("sum(i * i for i in range(3_000_000))\n")
    (tmp_path / "process_data.py").write_text(
        "import sys; data = open(sys.argv[2]).read(); print(len(data))\n")
    (tmp_path / "large_dataset.csv").write_text("a,b\n" * 100_000)
    return tmp_path


def test_basic_usage(scripts, capsys):
    # Execute a command with monitoring
    exit_code, monitor = execute_with_monitoring(['python', 'my_script.py'])

    # Get collected samples
    samples = monitor.get_samples()
    print(f"Process exited with code {exit_code}")
    print(f"Collected {len(samples)} monitoring samples")
    assert "Process exited with code 0" in capsys.readouterr().out


def test_advanced_usage(scripts, capsys):
    # Execute with custom monitoring parameters
    exit_code, monitor = execute_with_monitoring(
        cmd=['python', 'compute_intensive.py'],
        timeout=300,                    # 5 minute timeout
        base_interval_ms=50,           # Sample every 50ms
        max_interval_ms=500,           # Max interval 500ms
        output_file='monitoring.jsonl', # Save to file
        store_in_memory=True,          # Also keep in memory
        pause_for_attachment=True,     # Use signal-based pausing
        stdout_file='output.log',      # Redirect stdout
        stderr_file='errors.log',      # Redirect stderr
    )

    # Analyze the results
    summary = monitor.get_summary()
    print(f"Peak memory usage: {summary['peak_memory_mb']:.1f} MB")
    print(f"Average CPU usage: {summary['avg_cpu_percent']:.1f}%")
    assert exit_code == 0 and "Peak memory usage:" in capsys.readouterr().out
    assert (scripts / "monitoring.jsonl").stat().st_size > 0


def test_bioinformatics_workflow(scripts, capsys):
    # The example's blastn, with a command every machine has.
    exit_code, monitor = execute_with_monitoring(
        cmd=['python', 'compute_intensive.py'],
        timeout=3600,  # 1 hour timeout
        base_interval_ms=100,
        output_file='blast_monitoring.jsonl',
        store_in_memory=True
    )

    if exit_code == 0:
        # Analyze resource usage
        samples = monitor.get_samples()

        # Parse monitoring data
        parsed_samples = []
        for sample in samples:
            if isinstance(sample, str):
                parsed_samples.append(json.loads(sample))

        # Calculate statistics
        cpu_values = [s['cpu_usage'] for s in parsed_samples]
        memory_values = [s['mem_rss_kb'] for s in parsed_samples]

        print(f"BLAST job completed successfully")
        print(f"Peak CPU usage: {max(cpu_values):.1f}%")
        print(f"Peak memory usage: {max(memory_values)/1024:.1f} MB")
        print(f"Average CPU usage: {sum(cpu_values)/len(cpu_values):.1f}%")
    else:
        print(f"BLAST job failed with exit code {exit_code}")
    assert "completed successfully" in capsys.readouterr().out


def test_python_script_monitoring(scripts, capsys):
    # Monitor a Python data processing script
    exit_code, monitor = execute_with_monitoring(
        cmd=['python', 'process_data.py', '--input', 'large_dataset.csv'],
        base_interval_ms=50,  # High resolution monitoring
        pause_for_attachment=True,
        stdout_file='processing.log',
        stderr_file='processing.err'
    )

    # Generate monitoring report
    summary = monitor.get_summary()
    print(f"Data processing completed in {summary['elapsed_time']:.1f}s")
    print(f"Peak memory: {summary['peak_memory_mb']:.1f} MB")
    assert exit_code == 0 and "completed in" in capsys.readouterr().out
    assert (scripts / "processing.log").read_text().strip() == "400000"


def test_error_handling(scripts, capsys):
    try:
        exit_code, monitor = execute_with_monitoring(
            cmd=['nonexistent_command'],
            timeout=10
        )
    except FileNotFoundError:
        print("Command not found")
    except subprocess.TimeoutExpired:
        print("Process timed out")
    except RuntimeError as e:
        print(f"Monitoring failed: {e}")
    except Exception as e:
        print(f"Unexpected error: {e}")
    assert capsys.readouterr().out == "Command not found\n"


def test_temporary_output_files(scripts):
    import tempfile
    import os

    # Use temporary files for monitoring data
    with tempfile.NamedTemporaryFile(suffix='.jsonl', delete=False) as f:
        monitor_file = f.name

    try:
        exit_code, monitor = execute_with_monitoring(
            cmd=['python', 'my_script.py'],
            output_file=monitor_file
        )

        # Process monitoring data
        assert os.path.getsize(monitor_file) > 0

    finally:
        # Clean up
        if os.path.exists(monitor_file):
            os.unlink(monitor_file)
