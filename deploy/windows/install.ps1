<#
.SYNOPSIS
  Install (or upgrade) the sigstream endpoint agent as a Windows service.

.DESCRIPTION
  1. creates a virtual environment under -InstallDir with the given Python (installed for all
     users, e.g. C:\Program Files\Python311: the service account must be able to read it) and
     installs sigstream with its Windows extras (pywintrace, pywin32) into it;
  2. creates -DataDir (config, bookmarks, spool, logs) readable/writable only by SYSTEM,
     Administrators (and the virtual service account when -VirtualAccount is used), and copies
     agent.example.yaml to <DataDir>\agent.yaml if there is no config yet;
  3. validates the config (sigstream agent --check);
  4. registers the service with NSSM: the venv's python.exe -m sigstream agent --config ...,
     delayed automatic start, restart on any exit (5 s delay, throttled), stop by Ctrl+C with
     a 20 s grace period (the agent stops its ETW session, flushes or spools queued events and
     saves its bookmarks), stdout/stderr to rotated files; plus SCM failure actions as a second
     layer should nssm.exe itself die;
  5. optionally turns on PowerShell ScriptBlock/Module logging policy and installs Sysmon;
  6. starts the service and shows the health endpoint's answer.

  Re-running it upgrades in place: the service is stopped (gracefully), packages upgraded,
  the service re-registered with the same settings and started; config, bookmarks and spool
  are kept.

.EXAMPLE
  .\install.ps1 -Source C:\dist\sigstream-0.1.0-py3-none-any.whl -NssmPath C:\tools\nssm.exe -EnablePowerShellLogging
#>
[CmdletBinding()]
param(
    # a sigstream wheel, sdist or source directory (default: this repository)
    [string]$Source = (Resolve-Path "$PSScriptRoot\..\..").Path,
    [string]$PythonExe = "C:\Program Files\Python311\python.exe",
    [string]$InstallDir = "$env:ProgramFiles\sigstream",
    [string]$DataDir = "$env:ProgramData\sigstream",
    [string]$ServiceName = "sigstream",
    # nssm.exe (2.24, win64). Not downloaded by default: fetch it from https://nssm.cc, check it,
    # and pass the path (or -NssmUrl with -NssmSha256).
    [string]$NssmPath = "",
    [string]$NssmUrl = "",
    [string]$NssmSha256 = "",
    # run as the virtual account NT SERVICE\<ServiceName> (member of Performance Log Users and
    # Event Log Readers) instead of LocalSystem
    [switch]$VirtualAccount,
    [switch]$EnablePowerShellLogging,
    [string]$SysmonExe = "",                 # path to Sysmon64.exe: install/update Sysmon with sysmon-config.xml
    [string]$PipOptions = ""                 # e.g. "--no-index --find-links C:\dist" for offline hosts
)
$ErrorActionPreference = "Stop"

function Assert-Admin {
    $p = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
    if (-not $p.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
        throw "run this script from an elevated PowerShell (Administrator)"
    }
}

function Invoke-Checked([string]$Exe, [string[]]$Arguments) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "$Exe $($Arguments -join ' ') failed with exit code $LASTEXITCODE" }
}

Assert-Admin
if (-not (Test-Path $PythonExe)) { throw "Python not found at $PythonExe (install Python 3.10+ for all users)" }

# ---- NSSM ------------------------------------------------------------------------------------
$nssmDir = Join-Path $InstallDir "bin"
New-Item -ItemType Directory -Force -Path $nssmDir | Out-Null
$nssm = Join-Path $nssmDir "nssm.exe"
if ($NssmPath) {
    Copy-Item -Force $NssmPath $nssm
} elseif ($NssmUrl) {
    if (-not $NssmSha256) { throw "-NssmUrl needs -NssmSha256" }
    $tmp = Join-Path $env:TEMP "nssm-download"
    Invoke-WebRequest -UseBasicParsing -Uri $NssmUrl -OutFile "$tmp.zip"
    Expand-Archive -Force "$tmp.zip" $tmp
    $found = Get-ChildItem -Recurse $tmp -Filter nssm.exe | Where-Object { $_.FullName -match "win64" } | Select-Object -First 1
    if (-not $found) { throw "no win64\nssm.exe in $NssmUrl" }
    Copy-Item -Force $found.FullName $nssm
}
if (-not (Test-Path $nssm)) { throw "nssm.exe is needed: pass -NssmPath (or -NssmUrl and -NssmSha256)" }
if ($NssmSha256) {
    $h = (Get-FileHash -Algorithm SHA256 $nssm).Hash
    if ($h -ne $NssmSha256.ToUpper()) { Remove-Item $nssm; throw "nssm.exe SHA256 $h does not match $NssmSha256" }
}

# ---- stop an existing service (upgrade) --------------------------------------------------------
$existing = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
if ($existing) {
    Write-Host "Upgrading: stopping $ServiceName (graceful, up to 30 s)"
    if ($existing.Status -ne "Stopped") { & $nssm stop $ServiceName | Out-Null }
}

# ---- Python environment ------------------------------------------------------------------------
$venv = Join-Path $InstallDir "venv"
$py = Join-Path $venv "Scripts\python.exe"
if (-not (Test-Path $py)) {
    Write-Host "Creating virtual environment $venv"
    Invoke-Checked $PythonExe @("-m", "venv", $venv)
}
Invoke-Checked $py (@("-m", "pip", "install", "--upgrade", "--disable-pip-version-check") + $PipOptions.Split(" ", [StringSplitOptions]::RemoveEmptyEntries) + @("pip"))
$spec = if (Test-Path $Source -PathType Container) { "$Source[windows]" } else { "$Source" + "[windows]" }
Write-Host "Installing $spec"
Invoke-Checked $py (@("-m", "pip", "install", "--upgrade", "--disable-pip-version-check") + $PipOptions.Split(" ", [StringSplitOptions]::RemoveEmptyEntries) + @($spec))
# pywintrace must import here (it only works on Windows): fail now, not in the service
Invoke-Checked $py @("-c", "import etw, win32evtlog, win32event; print('pywintrace and pywin32 OK')")

# ---- data directory, config, ACL -------------------------------------------------------------------
foreach ($d in @($DataDir, "$DataDir\logs", "$DataDir\bookmarks", "$DataDir\spool")) {
    New-Item -ItemType Directory -Force -Path $d | Out-Null
}
$config = Join-Path $DataDir "agent.yaml"
if (-not (Test-Path $config)) {
    Copy-Item "$PSScriptRoot\agent.example.yaml" $config
    Write-Warning "Copied the example configuration to ${config}: edit kafka.bootstrap / TLS / SASL, then re-run or restart the service"
}
$account = if ($VirtualAccount) { "NT SERVICE\$ServiceName" } else { "LocalSystem" }
# SYSTEM + Administrators full control, nothing inherited (the config may hold Kafka credentials)
Invoke-Checked "icacls.exe" @($DataDir, "/inheritance:r", "/grant:r", "*S-1-5-18:(OI)(CI)F", "/grant:r", "*S-1-5-32-544:(OI)(CI)F", "/T", "/Q")

Write-Host "Validating $config"
Invoke-Checked $py @("-m", "sigstream", "agent", "--config", $config, "--check")

# ---- policies / Sysmon -----------------------------------------------------------------------------
if ($EnablePowerShellLogging) {
    Write-Host "Enabling PowerShell ScriptBlock and Module logging (policy registry keys)"
    Invoke-Checked "reg.exe" @("import", "$PSScriptRoot\enable-scriptblock-logging.reg")
}
if ($SysmonExe) {
    $sysmonSvc = Get-Service -Name Sysmon64, Sysmon -ErrorAction SilentlyContinue | Select-Object -First 1
    if ($sysmonSvc) { Invoke-Checked $SysmonExe @("-c", "$PSScriptRoot\sysmon-config.xml") }
    else { Invoke-Checked $SysmonExe @("-accepteula", "-i", "$PSScriptRoot\sysmon-config.xml") }
}

# ---- service -----------------------------------------------------------------------------------------
if (-not $existing) {
    Invoke-Checked $nssm @("install", $ServiceName, $py)
}
$settings = @(
    @("Application", $py),
    @("AppParameters", "-m sigstream agent --config `"$config`""),
    @("AppDirectory", $DataDir),
    @("DisplayName", "sigstream endpoint agent"),
    @("Description", "Ships PowerShell ETW and Sysmon events to Kafka for Sigma detection (sigstream)."),
    @("Start", "SERVICE_DELAYED_AUTO_START"),
    @("AppStdout", "$DataDir\logs\service.out.log"),
    @("AppStderr", "$DataDir\logs\service.err.log"),
    @("AppRotateFiles", "1"),
    @("AppRotateOnline", "1"),
    @("AppRotateBytes", "10485760"),
    @("AppExit", "Default", "Restart"),
    @("AppRestartDelay", "5000"),
    @("AppThrottle", "30000"),
    @("AppStopMethodSkip", "6"),          # skip WM_CLOSE / thread messages: Ctrl+C, then terminate
    @("AppStopMethodConsole", "20000"),   # Ctrl+C, then 20 s for a clean stop
    @("AppKillProcessTree", "1"),
    @("AppEnvironmentExtra", "PYTHONUNBUFFERED=1", "PYTHONUTF8=1")
)
foreach ($s in $settings) { Invoke-Checked $nssm (@("set", $ServiceName) + $s) | Out-Null }
if ($VirtualAccount) {
    Invoke-Checked $nssm @("set", $ServiceName, "ObjectName", $account, "") | Out-Null
    # ETW real-time sessions: Performance Log Users; the Sysmon channel: Event Log Readers
    foreach ($sid in @("S-1-5-32-559", "S-1-5-32-573")) {
        $group = (New-Object Security.Principal.SecurityIdentifier($sid)).Translate([Security.Principal.NTAccount]).Value.Split("\")[-1]
        & net.exe localgroup "$group" "$account" /add 2>$null | Out-Null
    }
    Invoke-Checked "icacls.exe" @($DataDir, "/grant:r", "${account}:(OI)(CI)M", "/T", "/Q")
} else {
    Invoke-Checked $nssm @("set", $ServiceName, "ObjectName", "LocalSystem") | Out-Null
}
# second layer: the SCM restarts the service if nssm.exe itself exits abnormally
Invoke-Checked "sc.exe" @("failure", $ServiceName, "reset=", "86400", "actions=", "restart/5000/restart/30000/restart/60000")
Invoke-Checked "sc.exe" @("failureflag", $ServiceName, "1")

Write-Host "Starting $ServiceName"
Invoke-Checked $nssm @("start", $ServiceName) | Out-Null
Start-Sleep -Seconds 5
try {
    $health = Invoke-RestMethod -UseBasicParsing -TimeoutSec 5 -Uri "http://127.0.0.1:8765/health"
    Write-Host ("health: status={0} published={1} dropped={2} events_lost={3}" -f $health.status, $health.published, $health.dropped, $health.events_lost)
} catch {
    Write-Warning "health endpoint not answering yet (check $DataDir\logs\agent.jsonl and service.err.log): $_"
}
